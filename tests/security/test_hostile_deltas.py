"""A hostile upstream streams the value it was sent split across LLM deltas
(issue 12, "leak-proof by construction"; DESIGN.md §7.3): a few characters
per event, in the OpenAI Chat Completions, Responses, Anthropic Messages and
Gemini stream formats, its bytes cut anywhere. Under ``keybroker run``, the
agent reassembles the deltas as its SDK would (the real OpenAI SDK for
OpenAI's formats; tests/support/llm_stream.py for the others) and finds
neither the value nor its lower- or upper-case form, nor do the audit and
the console; the text around it arrives with the placeholder in its place."""

from __future__ import annotations

import hashlib
import json
import secrets
import ssl
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.support.leaks import find_leak
from tests.support.llm_stream import FORMATS, reassemble, stream_of
from tests.support.openai_stub import HTTPSServer, TLSServer
from tests.support.proxy import Proxy
from tests.support.tlsca import TestCA

TOKEN = "kb_deltas_" + secrets.token_urlsafe(16)
VALUE = "KbDeltas_" + secrets.token_hex(10) + "Qz"
PLACEHOLDER = "<<secret:llm>>"
PATHS = {"/v1/chat/completions": "chat", "/v1/responses": "responses"}


class _Handler(BaseHTTPRequestHandler):
    """Streams a text holding the bearer value twice as ``fmt``'s deltas of
    ``piece`` characters, written ``chunk`` bytes at a time."""

    protocol_version = "HTTP/1.1"
    server: TLSServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        url = urlsplit(self.path)
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        path = url.path
        if path.startswith("/attack/"):  # /attack/<name>/v1/...: one of ATTACKS
            _, _, name, path = path.split("/", 3)
            q["attack"], path = name, "/" + path
        if path.startswith("/json/"):  # an SDK's URL cannot carry a query: label it by path
            path, q["ctype"] = path[len("/json") :], "application/json"
        fmt = PATHS.get(path) or q.get("fmt", "chat")
        value = (self.headers.get("authorization") or "").removeprefix("Bearer ")
        text = f'Your key is {value}. Again, quoted: "{value}"!'
        k = int(q.get("piece", "3"))
        data = stream_of(fmt, [text[i : i + k] for i in range(0, len(text), k)])
        if q.get("attack"):
            data = _attack(q["attack"], value)
        self.send_response(200)
        self.send_header("Content-Type", q.get("ctype", "text/event-stream"))
        if q.get("length"):  # with a length: buffered, unless the broker streams it
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        n = int(q.get("chunk", "7"))
        for i in range(0, len(data), n):
            part = data[i : i + n]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.flush()
            time.sleep(0.001)
        self.wfile.write(b"0\r\n\r\n")
        self.close_connection = True


def _chunk(index: Any, delta: Any, finish: str | None = None) -> str:
    choice = {"index": index, "delta": delta, "finish_reason": finish}
    obj = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m"}
    return f"data: {json.dumps({**obj, 'choices': [choice]})}\n\n"


def _call(index: Any, **function: str) -> Any:
    return {"tool_calls": [{"index": index, "type": "function", "function": function}]}


# The 2026-12-02 attack review's chat streams (the value in halves a, b): an
# index the SDK reads otherwise (cut), text the SDK's accumulate_delta joins.
ATTACKS: dict[str, Any] = {
    "tool-index-negative": lambda a, b: [
        _chunk(0, {"role": "assistant", **_call(0, name="f", arguments=a)}),
        _chunk(0, _call(-1, arguments=b)),
    ],
    "tool-index-true": lambda a, b: [
        _chunk(0, {"role": "assistant", **_call(0, name="f", arguments="{}")}),
        _chunk(0, _call(1, name="g", arguments=a)),
        _chunk(0, _call(True, arguments=b)),
    ],
    "choice-index-negative": lambda a, b: [
        _chunk(0, {"role": "assistant", "content": a}),
        _chunk(-1, {"content": b}),
    ],
    "tool-name": lambda a, b: [
        _chunk(0, {"role": "assistant", **_call(0, name=a, arguments="{}")}),
        _chunk(0, _call(0, name=b)),
    ],
    "audio-transcript": lambda a, b: [
        _chunk(0, {"role": "assistant", "audio": {"id": "au", "transcript": a}}),
        _chunk(0, {"audio": {"transcript": b}}),
    ],
    "function-call": lambda a, b: [
        _chunk(0, {"role": "assistant", "function_call": {"name": "f", "arguments": a}}),
        _chunk(0, {"function_call": {"arguments": b}}),
    ],
}
CUT = ("tool-index-negative", "tool-index-true", "choice-index-negative", "tool-name")


def _attack(name: str, value: str) -> bytes:
    h = len(value) // 2
    events = ATTACKS[name](value[:h], value[h:])
    return "".join([*events, _chunk(0, {}, "stop"), "data: [DONE]\n\n"]).encode()


class HostileLLM(HTTPSServer):
    handler = _Handler

    def __init__(self, ca: TestCA) -> None:
        self.ca = ca
        super().__init__(ca)


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostileLLM]:
    with HostileLLM(TestCA(tmp_path_factory.mktemp("deltas-ca"))) as up:
        yield up


@pytest.fixture(scope="module")
def broker(upstream: HostileLLM, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    base = tmp_path_factory.mktemp("deltas")
    policy = {
        "version": 1,
        "certs_dir": str(base / "certs"),
        "upstream_ca": str(upstream.ca.ca_path),
        "audit": {"path": str(base / "audit.jsonl")},
        "backends": {"local": {"type": "env"}},
        "tenants": {
            name: {
                "token_sha256": hashlib.sha256(f"{name}{TOKEN}".encode()).hexdigest(),
                "secrets": {
                    "llm": {
                        "backend": "local",
                        "path": "KB_DELTAS_VALUE",
                        "hosts": ["127.0.0.1"],
                        "ports": [upstream.port],
                    }
                },
                **extra,
            }
            for name, extra in (("acme", {}), ("optout", {"stream_deltas": "off"}))
        },
    }
    with Proxy(policy, base, env={"KB_DELTAS_VALUE": VALUE}) as proxy:
        yield proxy
    assert_clean(proxy.output().encode(), "the console")


def assert_clean(data: bytes, what: str) -> None:
    hit = find_leak(data, VALUE.encode())
    assert hit is None, f"{what} holds the value as {hit}"
    assert VALUE.lower().encode() not in data.lower(), f"{what} holds it in another case"


def _client(broker: Proxy, tenant: str = "acme") -> httpx.Client:
    ctx = ssl.create_default_context(cafile=str(broker.ca_path))
    return httpx.Client(
        proxy=broker.url(tenant, tenant + TOKEN), verify=ctx, timeout=30, trust_env=False
    )


def _audit_clean(broker: Proxy, scrubbed: int = 2) -> dict[str, Any]:
    time.sleep(0.2)  # the done record follows the stream's end
    text = broker.audit_path.read_bytes()
    assert_clean(text, "the audit")
    last: dict[str, Any] = json.loads(text.splitlines()[-1])
    assert last["scrubbed"] >= scrubbed
    return last


@pytest.mark.parametrize("piece", [1, 4])
@pytest.mark.parametrize("fmt", FORMATS)
def test_value_split_across_deltas_is_not_reassembled(
    broker: Proxy, upstream: HostileLLM, fmt: str, piece: int
) -> None:
    with _client(broker) as c:
        r = c.post(
            upstream.url(f"/stream?fmt={fmt}&piece={piece}&chunk=5"),
            headers={"Authorization": "Bearer <<secret:llm>>"},
            content=b"{}",
        )
    assert r.status_code == 200, r.text[:300]
    joined = reassemble(r.content)
    assert joined, "no deltas reached the agent"
    for key, text in joined.items():
        assert_clean(text.encode(), f"{fmt} channel {key}")
    assert_clean(r.content, f"{fmt}: the bytes")
    if fmt != "anthropic_json":  # its text is JSON: the quotes are escaped
        want = f'Your key is {PLACEHOLDER}. Again, quoted: "{PLACEHOLDER}"!'
        assert want in joined.values(), joined
    _audit_clean(broker)


def test_openai_sdk_reassembles_no_value(broker: Proxy, upstream: HostileLLM) -> None:
    """The real OpenAI SDK, streaming chat completions and responses."""
    from openai import OpenAI

    with _client(broker) as http:
        sdk = OpenAI(
            api_key="<<secret:llm>>", base_url=upstream.url("/v1"), http_client=http, max_retries=0
        )
        chat = sdk.chat.completions.create(model="m", messages=[], stream=True)
        text = "".join(c.choices[0].delta.content or "" for c in chat if c.choices)
        events = sdk.responses.create(model="m", input="hi", stream=True)
        deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
        # The SDK parses SSE whatever the label: a hostile upstream calls it JSON.
        sdk = sdk.with_options(base_url=upstream.url("/json/v1"))
        chat = sdk.chat.completions.create(model="m", messages=[], stream=True)
        mislabelled = "".join(c.choices[0].delta.content or "" for c in chat if c.choices)
    for what, got in (("chat", text), ("responses", deltas), ("mislabelled", mislabelled)):
        assert_clean(got.encode(), f"the SDK's {what} text")
        assert got == f'Your key is {PLACEHOLDER}. Again, quoted: "{PLACEHOLDER}"!', what
    _audit_clean(broker)


@pytest.mark.parametrize("name", ATTACKS)
def test_openai_sdk_accumulates_no_value_from_an_ambiguous_stream(
    broker: Proxy, upstream: HostileLLM, name: str
) -> None:
    """The real OpenAI SDK's stream helper (accumulate_delta: list indexes,
    every string leaf joined) on the review's streams: cut, or scrubbed."""
    from openai import OpenAI

    seen, failed = "", None
    with _client(broker) as http:
        sdk = OpenAI(
            api_key="<<secret:llm>>",
            base_url=upstream.url(f"/attack/{name}/v1"),
            http_client=http,
            max_retries=0,
        )
        try:
            with sdk.chat.completions.stream(model="m", messages=[]) as s:
                for _ in s:
                    seen = s.current_completion_snapshot.model_dump_json()
                seen = s.get_final_completion().model_dump_json()
        except Exception as exc:  # the cut connection
            failed = exc
    assert_clean(seen.encode(), f"the SDK's {name} snapshot")
    last = _audit_clean(broker, 0 if name in CUT else 1)
    if name in CUT:
        assert failed is not None, seen
        assert "upstream_protocol_error" in json.dumps(last), last
    else:
        assert failed is None and PLACEHOLDER in seen, (failed, seen)


def test_a_tenant_that_opts_out_gets_each_event_scrubbed_alone(
    broker: Proxy, upstream: HostileLLM
) -> None:
    """``stream_deltas: off`` (the extension): no hold, no joining; the
    documented price is that the pieces reach the agent. Its console, audit
    and every single event stay clean."""
    with _client(broker, "optout") as c:
        r = c.post(
            upstream.url("/stream?fmt=anthropic&piece=4&chunk=5"),
            headers={"Authorization": "Bearer <<secret:llm>>"},
            content=b"{}",
        )
    assert r.status_code == 200
    assert VALUE in reassemble(r.content)[("anthropic", 0, "text")]
    assert find_leak(r.content, VALUE.encode()) is None


@pytest.mark.parametrize(
    ("ctype", "length"),
    [("application/json", ""), ("application/json", "1"), ("application/octet-stream", "")],
    ids=["json-chunked", "json-with-length", "octet-stream"],
)
def test_a_stream_request_is_scanned_whatever_the_answer_is_labelled(
    broker: Proxy, upstream: HostileLLM, ctype: str, length: str
) -> None:
    """The SDKs parse the answer to ``"stream": true`` as SSE whatever its
    Content-Type (and with a length, which would otherwise be buffered)."""
    with _client(broker) as c:
        r = c.post(
            upstream.url(f"/stream?fmt=anthropic&piece=3&ctype={ctype}&length={length}"),
            headers={"Authorization": "Bearer <<secret:llm>>"},
            content=b'{"model": "m", "stream": true}',
        )
    assert r.status_code == 200 and r.headers["content-type"] == ctype
    joined = reassemble(r.content)
    assert_clean(joined[("anthropic", 0, "text")].encode(), f"{ctype} channel")
    assert PLACEHOLDER in joined[("anthropic", 0, "text")]
    assert_clean(r.content, f"{ctype}: the bytes")
    _audit_clean(broker)
