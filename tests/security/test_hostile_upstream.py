"""The hostile upstream (issue 12, "one choke point"): a raw-socket TLS
server that reflects the value keybroker substituted through every byte path
that bypasses a hook — the reason phrase, a malformed status line, a header
line without a colon, a death inside the response head, ``101`` to nobody or
to a WebSocket version 8, WebSocket ping/pong payloads and close reasons,
``Transfer-Encoding: gzip``, 1xx responses, trailers, HTTP/2 protocol
errors, GOAWAY debug data and resets.

Every test names its path and asserts on every byte the agent received
(raw, in every spelling the independent leak detector knows, and
case-insensitively), on the audit and on the console, under
``keybroker run``; a representative subset also under ``mitmdump -s``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h2.exceptions
import pytest

from tests.security.conftest import H2, Wire, tunnel
from tests.support.hostile import Hostile
from tests.support.leaks import find_leak
from tests.support.net import free_port, port_open, wait_for
from tests.support.proxy import REPO, Proxy
from tests.support.tlsca import TestCA

TOKEN = "kb_hostile_" + secrets.token_urlsafe(16)
VALUE = "KbHostile_" + secrets.token_hex(10) + "Zq"
"""Mixed case: the agent's bytes are also searched lower-cased."""
WS_KEY = "dGhlIHNhbXBsZSBub25jZQ=="


@dataclass
class World:
    h1: Hostile
    h2: Hostile
    untrusted: Hostile
    closed_port: int
    policy: dict[str, Any]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("hostile")
    ca, other = TestCA(base / "ca"), TestCA(base / "other", "someone else's CA")
    with Hostile(ca, h2=False) as h1, Hostile(ca, h2=True) as h2, Hostile(other, h2=False) as bad:
        closed = free_port()
        policy = {
            "version": 1,
            "certs_dir": str(base / "certs"),
            "upstream_ca": ca.ca_path,
            "audit": {"path": "audit.jsonl"},
            "backends": {"local": {"type": "env"}},
            "tenants": {
                "acme": {
                    "token_sha256": _digest(TOKEN),
                    "secrets": {
                        "hostile": {
                            "backend": "local",
                            "path": "KB_HOSTILE_VALUE",
                            "hosts": ["127.0.0.1"],
                            "ports": [h1.port, h2.port, bad.port, closed],
                        }
                    },
                }
            },
        }
        yield World(h1, h2, bad, closed, policy)


def _digest(token: str) -> str:
    import hashlib

    return hashlib.sha256(token.encode()).hexdigest()


class Mitmdump(Proxy):
    """``mitmdump -s addons/keybroker.py`` (with its console output) instead of ``keybroker run``."""

    def start(self, timeout: float = 30.0) -> Mitmdump:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.write_policy()
        mitmdump = Path(sys.executable).parent / "mitmdump"
        cmd = [
            str(mitmdump),
            "--listen-host",
            "127.0.0.1",
            "--listen-port",
            str(self.port),
            "-s",
            str(REPO / "addons" / "keybroker.py"),
            "--set",
            f"keybroker_config={self.config}",
        ]
        env = {**os.environ, **self.env, "HOME": str(self.workdir), "PYTHONUNBUFFERED": "1"}
        with self.out_path.open("ab") as out:
            self.proc = subprocess.Popen(
                cmd, cwd=self.workdir, env=env, stdout=out, stderr=subprocess.STDOUT
            )
        ok = wait_for(lambda: port_open(self.port) or self.proc.poll() is not None, timeout)
        if not ok or self.proc.poll() is not None:
            self.stop()
            raise RuntimeError(f"mitmdump did not start:\n{self.output()}")
        return self

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        return super().stop(timeout)


@pytest.fixture(scope="module", params=["run", "mitmdump"])
def broker(
    request: pytest.FixtureRequest, world: World, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proxy]:
    kind = Mitmdump if request.param == "mitmdump" else Proxy
    workdir = tmp_path_factory.mktemp(f"broker-{request.param}")
    policy = {**world.policy, "audit": {"path": str(workdir / "audit.jsonl")}}
    with kind(policy, workdir, env={"KB_HOSTILE_VALUE": VALUE}) as proxy:
        proxy.kind = request.param  # type: ignore[attr-defined]
        yield proxy
    # The console, after the process ended (everything flushed).
    assert not _leaks(proxy.output().encode()), "the console quoted the value"


# -- what the agent received ------------------------------------------------------------------
def _leaks(data: bytes) -> list[str]:
    hit = find_leak(data, VALUE.encode())
    found = [f"{hit[0]}@{hit[1]}"] if hit else []
    if VALUE.lower().encode() in data.lower():
        found.append("case-insensitive")
    return found


def assert_clean(data: bytes, what: str) -> None:
    assert not _leaks(data), f"{what} held the value: {_leaks(data)}"


def _records(proxy: Proxy, path: str) -> list[dict[str, Any]]:
    text = proxy.audit_path.read_text() if proxy.audit_path.exists() else ""
    assert_clean(text.encode(), "the audit")
    return [r for r in map(json.loads, text.splitlines()) if r.get("path") == f"/{path}"]


def _wait_record(proxy: Proxy, path: str) -> dict[str, Any]:
    assert wait_for(lambda: bool(_records(proxy, path)), 10), f"no audit record for /{path}"
    return _records(proxy, path)[-1]


def h1_exchange(proxy: Proxy, port: int, path: str, *extra: str, then: bytes = b"") -> bytes:
    """One HTTP/1.1 request through a tunnel; every byte received until close."""
    w = tunnel(proxy, f"127.0.0.1:{port}", creds=("acme", TOKEN))
    with w:
        head = [
            f"GET /{path} HTTP/1.1",
            f"Host: 127.0.0.1:{port}",
            "Authorization: Bearer <<secret:hostile>>",
            *extra,
        ]
        if not extra:
            head.append("Connection: close")
        w.send(("\r\n".join(head) + "\r\n\r\n").encode())
        if then:
            first = _read_until(w, b"\r\n\r\n")
            w.send(then)
            return first + w.rest(timeout=3)
        return w.rest(timeout=3)


def _read_until(w: Wire, marker: bytes) -> bytes:
    while marker not in w.buf and w._fill():
        pass
    out, w.buf = w.buf, b""
    return out


class _Recording:
    """A socket that keeps every byte it reads."""

    def __init__(self, sock: ssl.SSLSocket) -> None:
        self.sock, self.data = sock, b""

    def recv(self, n: int) -> bytes:
        out = self.sock.recv(n)
        self.data += out
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


def h2_exchange(proxy: Proxy, port: int, path: str) -> tuple[bytes, dict[str, Any]]:
    """One HTTP/2 request; the raw bytes received and the decoded response."""
    w = tunnel(proxy, f"127.0.0.1:{port}", creds=("acme", TOKEN), alpn=("h2",))
    with w:
        rec = _Recording(w.sock)  # type: ignore[arg-type]
        w.sock = rec  # type: ignore[assignment]
        client = H2(w)
        sid = client.send(
            [
                (":method", "GET"),
                (":scheme", "https"),
                (":authority", f"127.0.0.1:{port}"),
                (":path", f"/{path}"),
                ("authorization", "Bearer <<secret:hostile>>"),
            ]
        )
        w.sock.settimeout(5)
        # The agent's own HTTP/2 parser may refuse what it got (an upper-case
        # trailer name relayed from HTTP/1): the bytes are checked all the same.
        with contextlib.suppress(OSError, TimeoutError, h2.exceptions.ProtocolError):
            client.pump([sid])
        r = client.responses[sid]
        decoded = json.dumps([r["headers"], r["status"]], default=repr).encode() + r["body"]
        return rec.data + decoded, r


def _json_reason(raw: bytes) -> str | None:
    body = raw.split(b"\r\n\r\n", 1)[-1]
    with contextlib.suppress(ValueError):
        return str(json.loads(body)["reason"])
    return None


def _status(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1])


# -- HTTP/1.1 upstream, HTTP/1.1 agent ----------------------------------------------------------
UPSTREAM_ERRORS = ["status-line", "no-colon", "die-in-head", "te-gzip-chunked", "te-gzip"]


@pytest.mark.parametrize("path", UPSTREAM_ERRORS)
def test_h1_upstream_errors_become_keybroker_json(broker: Proxy, world: World, path: str) -> None:
    """mitmproxy's own 502 page would quote the upstream's bytes (the value):
    the agent gets keybroker's JSON error instead, audited as ``error``."""
    raw = h1_exchange(broker, world.h1.port, path)
    assert_clean(raw, f"the agent ({path})")
    assert _status(raw) == 502 and _json_reason(raw) == "upstream_protocol_error", raw[:300]
    rec = _wait_record(broker, path)
    assert (rec["decision"], rec["reason"], rec["status"]) == (
        "error",
        "upstream_protocol_error",
        502,
    )


def test_reason_phrase_is_scrubbed(broker: Proxy, world: World) -> None:
    raw = h1_exchange(broker, world.h1.port, "reason")
    assert_clean(raw, "the agent")
    assert raw.startswith(b"HTTP/1.1 401 Unauthorized\r\n") and raw.endswith(b"no")


@pytest.mark.parametrize(
    ("path", "extra"),
    [
        ("switch-unasked", ()),
        ("switch-unasked", ("Connection: Upgrade", "Upgrade: websocket")),
    ],
    ids=["no-upgrade-asked", "websocket-without-version"],
)
def test_switch_nobody_asked_for_is_refused(
    broker: Proxy, world: World, path: str, extra: tuple[str, ...]
) -> None:
    """A ``101`` that is not a version-13 WebSocket switch would make the
    connection a raw pipe: refused, ``protocol_not_allowed``."""
    raw = h1_exchange(broker, world.h1.port, path, *extra, "Connection: close")
    assert_clean(raw, "the agent")
    assert _status(raw) == 403 and _json_reason(raw) == "protocol_not_allowed", raw[:300]


def test_websocket_version_8_is_refused_before_upstream(broker: Proxy, world: World) -> None:
    before = len(world.h1.seen)
    raw = h1_exchange(
        broker,
        world.h1.port,
        "switch-v8",
        "Connection: Upgrade",
        "Upgrade: websocket",
        "Sec-WebSocket-Version: 8",
        f"Sec-WebSocket-Key: {WS_KEY}",
    )
    assert_clean(raw, "the agent")
    assert _status(raw) == 403 and _json_reason(raw) == "protocol_not_allowed", raw[:300]
    assert len(world.h1.seen) == before, "nothing may reach the upstream"
    rec = _wait_record(broker, "switch-v8")
    assert (rec["decision"], rec["reason"]) == ("deny", "protocol_not_allowed")


WS_HEAD = (
    "Connection: Upgrade",
    "Upgrade: websocket",
    "Sec-WebSocket-Version: 13",
    f"Sec-WebSocket-Key: {WS_KEY}",
)


@pytest.mark.parametrize("path", ["ws-ping", "ws-pong", "ws-close"])
def test_websocket_control_frames_are_scrubbed(broker: Proxy, world: World, path: str) -> None:
    raw = h1_exchange(broker, world.h1.port, path, *WS_HEAD)
    assert raw.startswith(b"HTTP/1.1 101"), raw[:200]
    assert_clean(raw, f"the agent ({path})")


def _masked(opcode: int, payload: bytes) -> bytes:
    mask = b"\x01\x02\x03\x04"
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + body


@pytest.mark.parametrize(("opcode", "name"), [(0x9, "ping"), (0xA, "pong"), (0x8, "close")])
def test_websocket_client_control_frame_with_a_raw_value_never_leaves(
    broker: Proxy, world: World, opcode: int, name: str
) -> None:
    payload = VALUE.encode() if opcode != 0x8 else b"\x03\xe8" + VALUE.encode()
    before = len(world.h1.ws_frames)
    raw = h1_exchange(broker, world.h1.port, "ws-hold", *WS_HEAD, then=_masked(opcode, payload))
    assert raw.startswith(b"HTTP/1.1 101"), raw[:200]
    sent = b"".join(world.h1.ws_frames[before:])
    assert VALUE.encode() not in sent, f"a client {name} carried the value upstream"


def test_informational_response_is_scrubbed(broker: Proxy, world: World) -> None:
    raw = h1_exchange(broker, world.h1.port, "1xx")
    assert_clean(raw, "the agent")


def test_trailers_are_scrubbed(broker: Proxy, world: World) -> None:
    """mitmproxy 12 cannot read HTTP/1 trailers: the streamed response is cut
    after its (scrubbed) head; over HTTP/2 they are relayed scrubbed."""
    raw = h1_exchange(broker, world.h1.port, "trailers")
    assert_clean(raw, "the agent")
    assert raw.startswith(b"HTTP/1.1 200 ")


def test_unreachable_upstream(broker: Proxy, world: World) -> None:
    raw = h1_exchange(broker, world.closed_port, "anything")
    assert _status(raw) == 502 and _json_reason(raw) == "upstream_unreachable", raw[:300]
    rec = _wait_record(broker, "anything")
    assert (rec["decision"], rec["reason"], rec["status"]) == ("error", "upstream_unreachable", 502)


def test_untrusted_upstream_certificate(broker: Proxy, world: World) -> None:
    raw = h1_exchange(broker, world.untrusted.port, "reason")
    assert _status(raw) == 502 and _json_reason(raw) == "upstream_tls_failed", raw[:300]
    assert world.untrusted.seen == [], "no request may reach a server keybroker did not verify"


def test_unknown_protocol_after_connect_is_never_piped(broker: Proxy, world: World) -> None:
    """With raw TCP on, mitmproxy would relay these bytes both ways unseen."""
    before = world.h1.accepts
    w = tunnel(broker, f"127.0.0.1:{world.h1.port}", creds=("acme", TOKEN), tls=False)
    with w:
        w.send(b"SSH-2.0-OpenSSH_9.0\r\n")
        w.rest(timeout=3)
    assert world.h1.accepts == before, "the upstream must never be connected to"


# -- HTTP/2 agent -------------------------------------------------------------------------------
@pytest.mark.parametrize("path", [*UPSTREAM_ERRORS, "reason", "switch-unasked", "1xx", "trailers"])
def test_h2_agent_over_h1_upstream(broker: Proxy, world: World, path: str) -> None:
    raw, resp = h2_exchange(broker, world.h1.port, path)
    assert_clean(raw, f"the HTTP/2 agent ({path})")
    if path in UPSTREAM_ERRORS:
        assert resp["status"] == 502 and json.loads(resp["body"])["reason"] == (
            "upstream_protocol_error"
        )
    if path == "switch-unasked":
        assert resp["status"] == 403 and json.loads(resp["body"])["reason"] == (
            "protocol_not_allowed"
        )


@pytest.mark.parametrize(
    "path", ["h2-bad-header", "h2-goaway", "h2-trailers", "h2-reset-after-head"]
)
def test_h2_upstream(broker: Proxy, world: World, path: str) -> None:
    raw, resp = h2_exchange(broker, world.h2.port, path)
    assert_clean(raw, f"the HTTP/2 agent ({path})")
    if path in ("h2-bad-header", "h2-goaway"):
        assert resp["status"] == 502, resp
        assert json.loads(resp["body"])["reason"] == "upstream_protocol_error"
        rec = _wait_record(broker, path)
        assert (rec["decision"], rec["reason"]) == ("error", "upstream_protocol_error")


def test_console_and_audit_never_quote_the_value(broker: Proxy, world: World) -> None:
    """Checked after the tests above ran against this broker."""
    assert_clean(broker.output().encode(), "the console")
    assert_clean(broker.audit_path.read_bytes(), "the audit")
