"""The addon's option guards (in the ``taddons`` style of mitmproxy's own
addon tests), the choke point's answers and the log filter
(addons/chokepoint.py, addons/logscrub.py)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mitmproxy import exceptions, http
from mitmproxy.addons import next_layer, proxyserver
from mitmproxy.proxy.layers.http._events import ErrorCode
from mitmproxy.test import taddons, tflow

from addons import logscrub
from addons.keybroker import KeyBroker
from broker.engine import Engine
from broker.scrub.layers import MARKER
from tests.unit.conftest import one_secret_policy

TOKEN = "kb_test_token_for_chokepoint"
VALUE = "kbcanary_choke_5f4e3d2c1b0a99887766"


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    policy = one_secret_policy(tmp_path, TOKEN)
    e = Engine(policy, env={"API_KEY": VALUE})
    e.scrubber.add(VALUE.encode(), b"<<secret:api>>", ("acme", "api"))
    e.scrubber.settle(5)
    yield e
    e.close()


@pytest.fixture
def kb(engine: Engine) -> Iterator[tuple[KeyBroker, Any]]:
    a = KeyBroker(engine)
    with taddons.context(proxyserver.Proxyserver(), next_layer.NextLayer(), a) as tctx:
        tctx.options.update(server=False)  # declares the proxy options; binds nothing
        yield a, tctx


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        pytest.param("ssl_insecure", True, "verifies upstream TLS", id="ssl-insecure"),
        pytest.param("stream_large_bodies", "1m", "streams and scrubs", id="stream-large-bodies"),
        pytest.param("ignore_hosts", ["example.com"], "unset ignore_hosts", id="ignore-hosts"),
        pytest.param("allow_hosts", ["example.com"], "unset allow_hosts", id="allow-hosts"),
        pytest.param("tcp_hosts", [".*"], "unset tcp_hosts", id="tcp-hosts"),
        pytest.param("udp_hosts", [".*"], "unset udp_hosts", id="udp-hosts"),
        pytest.param("mode", ["dns"], "regular", id="dns-mode"),
        pytest.param("mode", ["socks5"], "regular", id="socks-mode"),
        pytest.param("mode", ["transparent"], "regular", id="transparent-mode"),
        pytest.param("mode", ["upstream:http://x:1"], "regular", id="upstream-mode"),
    ],
)
def test_configure_refuses_options_that_open_a_way_around(
    kb: tuple[KeyBroker, Any], option: str, value: Any, message: str
) -> None:
    _, tctx = kb
    with pytest.raises(exceptions.OptionsError, match=message):
        tctx.configure(kb[0], **{option: value})


def test_configure_forces_lazy_connections_and_no_raw_tcp(kb: tuple[KeyBroker, Any]) -> None:
    a, tctx = kb
    tctx.configure(a, connection_strategy="eager", rawtcp=True)
    assert tctx.options.connection_strategy == "lazy"
    assert tctx.options.rawtcp is False


def test_regular_mode_on_a_port_is_fine(kb: tuple[KeyBroker, Any]) -> None:
    a, tctx = kb
    tctx.configure(a, mode=["regular@8081"])


def test_guard_head_scrubs_reason_and_fields(kb: tuple[KeyBroker, Any]) -> None:
    a, _ = kb
    resp = http.Response.make(401, b"", {"x-echo": VALUE})
    resp.reason = f"Invalid key {VALUE}"
    a.chokepoint.head(None, resp)
    assert resp.reason == "Unauthorized"
    assert resp.headers["x-echo"] == MARKER.decode()  # no flow, no tenant: name-free


def test_guard_refusal_and_control(kb: tuple[KeyBroker, Any]) -> None:
    a, _ = kb
    f = tflow.tflow()
    assert a.chokepoint.refusal(f, ErrorCode.KILL) is None  # a cut says nothing
    reply = a.chokepoint.refusal(f, ErrorCode.GENERIC_SERVER_ERROR)
    assert reply is not None and json.loads(reply.body)["reason"] == "upstream_protocol_error"
    assert a.chokepoint.control(f, True, VALUE.encode()) is None  # the agent's: refused
    assert a.chokepoint.control(f, False, VALUE.encode()) == b""  # the upstream's: emptied
    assert a.chokepoint.control(f, False, b"hello") == b"hello"


def test_log_records_are_scrubbed_args_and_tracebacks_too(
    kb: tuple[KeyBroker, Any], caplog: pytest.LogCaptureFixture
) -> None:
    a, _ = kb
    handler = logging.StreamHandler()
    records: list[str] = []
    handler.emit = lambda r: records.append(handler.format(r))  # type: ignore[method-assign]
    lg = logging.getLogger("kbtest.scrub")
    lg.addHandler(handler)
    try:
        logscrub.install(a.chokepoint.log_filter)
        lg.warning("Unexpected data from server: %r", VALUE.encode())
        try:
            raise ValueError(f"bad header {VALUE}")
        except ValueError:
            lg.exception("crashed")
    finally:
        lg.removeHandler(handler)
    assert len(records) == 2
    assert all(VALUE not in r for r in records), records
    assert MARKER.decode() in records[0] and "ValueError" in records[1]


def test_guard_does_not_rescan_a_head_the_hooks_scrubbed(kb: tuple[KeyBroker, Any]) -> None:
    """CPU: a head the response hooks already scrubbed is not scanned again;
    any other head (another object, no state) is."""
    a, _ = kb
    f = tflow.tflow(resp=True)
    st = a.flows.start(f, None)
    st.headers_scrubbed = True
    assert f.response is not None
    f.response.headers["x-echo"] = VALUE  # stands for a head the hooks saw (and scrubbed)
    a.chokepoint.head(f, f.response)
    assert f.response.headers["x-echo"] == VALUE  # skipped: the hooks' scan counts
    other = http.Response.make(200, b"", {"x-echo": VALUE})
    a.chokepoint.head(f, other)  # e.g. a response another addon put in its place
    assert VALUE not in str(other.headers)
