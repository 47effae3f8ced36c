"""The live feed and ``keybroker tail`` (broker/console.py): agent-chosen text
cannot forge markup, move the cursor, retitle the terminal or reorder text;
the feed batches; tail filters and follows rotation."""

from __future__ import annotations

import io
import threading
import time
import unicodedata
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

from broker.audit.log import AuditLog
from broker.audit.record import build_record
from broker.cli.console import (
    DECISION_STYLES,
    Feed,
    Summary,
    render_header,
    render_plain,
    render_record,
    sanitize,
)
from broker.cli.follow import tail

BIDI = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"


def rec(**over: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "tenant": "acme",
        "decision": "allow",
        "reason": None,
        "secrets": ["stripe"],
        "method": "GET",
        "scheme": "https",
        "host": "api.example.com",
        "port": 443,
        "path": "/v1/charges",
        "status": 200,
        "scrubbed": 0,
        "duration_ms": 3.25,
    }
    fields.update(over)
    return build_record(**fields)


def console(terminal: bool) -> Console:
    return Console(
        file=io.StringIO(),
        force_terminal=terminal,
        width=200,
        color_system="truecolor" if terminal else None,
    )


def output(c: Console) -> str:
    file = c.file
    assert isinstance(file, io.StringIO)
    return file.getvalue()


def unsafe(ch: str) -> bool:
    return unicodedata.category(ch) == "Cc" or ch in BIDI or ch in "\u2028\u2029\u200e\u200f\u061c"


# -- sanitize ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        pytest.param("/a\x1b[2K\rb", "/ab", id="csi-erase-line-and-cr"),
        pytest.param("/a\x1b]0;pwned title\x07b", "/ab", id="osc-title-bel"),
        pytest.param(
            "/a\x1b]8;;http://evil\x1b\\link\x1b]8;;\x1b\\", "/alink", id="osc8-hyperlink-st"
        ),
        pytest.param("/a\x9b2Jb", "/ab", id="c1-csi"),
        pytest.param("/a\x9d0;t\x9cb", "/ab", id="c1-osc-st"),
        pytest.param("/a\x1bPq#0\x1b\\b", "/ab", id="dcs"),
        pytest.param("/a\x1b7b\x1b8", "/ab", id="save-restore-cursor"),
        pytest.param("/a\x1b", "/a", id="lone-esc"),
        pytest.param("/a\nFAKE allow", "/aFAKE allow", id="newline"),
        pytest.param("/a\x00\x07\x08\x7fb", "/ab", id="c0-and-del"),
        pytest.param("/\u202egnp.exe", "/gnp.exe", id="rlo"),
        pytest.param("/\u2066x\u2069", "/x", id="isolates"),
        pytest.param("[red]x[/red]", "[red]x[/red]", id="markup-is-just-text"),
        pytest.param("caf\u00e9 \u65e5\u672c", "caf\u00e9 \u65e5\u672c", id="unicode-kept"),
    ],
)
def test_sanitize(raw: str, clean: str) -> None:
    assert sanitize(raw) == clean


def test_sanitize_caps_length_and_stringifies() -> None:
    out = sanitize("a" * 500)
    assert len(out) == 200 and out.endswith("…")
    assert sanitize("a" * 200) == "a" * 200
    assert sanitize(443) == "443" and sanitize(None) == "None"
    assert sanitize("x\udcff").encode("utf-8")  # lone surrogates cannot break the stream


@given(st.text(alphabet=st.characters(codec=None), max_size=600))
def test_sanitize_never_lets_a_control_through(raw: str) -> None:
    out = sanitize(raw)
    assert len(out) <= 200
    assert not any(unsafe(ch) for ch in out)
    out.encode("utf-8")


@given(st.text(alphabet=st.sampled_from(list("\x1b[]P^_X\x07\x9b\x9c\x9d\\;0a[]\r\n" + BIDI))))
def test_sanitize_handles_any_mix_of_escape_pieces(raw: str) -> None:
    out = sanitize(raw)
    assert not any(unsafe(ch) for ch in out)
    assert set(out) <= set("[]P^_X\\;0a…")


# -- one record ------------------------------------------------------------------------
def test_markup_in_agent_text_renders_literally() -> None:
    c = console(True)
    c.print(render_record(rec(path="/[red]x[/red][link=http://evil.example]y", tenant="[bold]t")))
    out = output(c)
    assert "/[red]x[/red][link=http://evil.example]y" in out
    assert "[bold]t" in out
    assert "\x1b]8;" not in out, "no hyperlink was created"


def test_escape_sequences_in_agent_text_never_reach_the_terminal() -> None:
    c = console(True)
    text = render_record(rec(path="/a\x1b[2K\r\x1b]0;title\x07\u202eb", host="h\x1b[1A"))
    c.print(text)
    out = output(c)
    for bad in ("\x1b[2K", "\x1b[1A", "\x1b]", "\r", "\u202e", "title"):
        assert bad not in out, repr(bad)
    assert "h:443/ab" in text.plain


@pytest.mark.parametrize("decision", ["allow", "pass", "deny", "error"])
def test_decisions_are_coloured(decision: str) -> None:
    text = render_record(
        rec(decision=decision, reason=None if decision in ("allow", "pass") else "x")
    )
    styles = {
        str(span.style) for span in text.spans if decision in text.plain[span.start : span.end]
    }
    assert DECISION_STYLES[decision] in styles


@pytest.mark.parametrize(("scrubbed", "style"), [(0, "dim"), (3, "bold yellow")])
def test_scrubbed_count_is_highlighted_when_nonzero(scrubbed: int, style: str) -> None:
    text = render_record(rec(scrubbed=scrubbed))
    spans = [s for s in text.spans if text.plain[s.start : s.end].strip() == f"scrubbed={scrubbed}"]
    assert [str(s.style) for s in spans] == [style]


def test_a_line_shows_every_part() -> None:
    r = rec(
        decision="deny",
        reason="host_not_allowed",
        status=403,
        secrets=["a", "b"],
        duration_ms=12.345,
    )
    parts = (
        "deny",
        "acme",
        "a,b",
        "GET",
        "api.example.com:443/v1/charges",
        "403",
        "host_not_allowed",
        "scrubbed=0",
        "12.3ms",
        r["ts"][11:23],
    )
    for line in (render_record(r).plain, render_plain(r)):
        for part in parts:
            assert part in line, part


def test_incomplete_records_still_render() -> None:
    for r in ({}, {"decision": None, "secrets": "nope", "duration_ms": "x", "ts": 5}):
        assert render_record(r).plain
        assert render_plain(r)


# -- the feed --------------------------------------------------------------------------
class CountingIO(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, s: str) -> int:
        self.writes += 1
        return super().write(s)


def test_feed_is_plain_off_a_terminal_and_batches() -> None:
    file = CountingIO()
    feed = Feed(Console(file=file, force_terminal=False, width=200), interval=3600)
    assert feed.plain
    for i in range(100):
        feed.push(rec(path=f"/r/{i}\x1b[31m"))
    feed.close()
    lines = file.getvalue().splitlines()
    assert len(lines) == 100 and lines[0].endswith("ms") and "/r/0" in lines[0]
    assert "\x1b" not in file.getvalue()
    assert file.writes == 1, "one write for the whole batch"


def test_feed_on_a_terminal_renders_rich() -> None:
    c = console(True)
    feed = Feed(c, interval=0.01)
    feed.push(rec(decision="deny", reason="host_not_allowed", path="/[red]x"))
    deadline = time.monotonic() + 5
    while "host_not_allowed" not in output(c) and time.monotonic() < deadline:
        time.sleep(0.01)  # the background flusher writes without close()
    feed.close()
    out = output(c)
    assert "host_not_allowed" in out and "/[red]x" in out and "\x1b[" in out


def test_plain_can_be_forced() -> None:
    c = console(True)
    feed = Feed(c, plain=True, interval=3600)
    feed.push(rec())
    feed.close()
    assert "\x1b[" not in output(c) and "tenant=acme" in output(c)


def test_a_stuck_feed_drops_and_says_so() -> None:
    c = console(False)
    feed = Feed(c, interval=3600, max_pending=2)
    for _ in range(5):
        feed.push(rec())
    feed.close()
    lines = output(c).splitlines()
    assert len(lines) == 3 and "3 records not shown" in lines[-1]


def test_summary_counts_by_decision_and_reason() -> None:
    s = Summary()
    for r in [
        rec(),
        rec(scrubbed=2),
        rec(decision="pass", secrets=[]),
        rec(decision="deny", reason="host_not_allowed", status=403),
        rec(decision="deny", reason="host_not_allowed", status=403),
        rec(decision="error", reason="backend_unavailable", status=502),
    ]:
        s.add(r)
    assert s.by_decision == {"allow": 2, "pass": 1, "deny": 2, "error": 1}
    assert s.by_reason[("deny", "host_not_allowed")] == 2
    assert s.total == 6 and s.scrubbed == 2
    c = Console(file=io.StringIO(), width=120, record=True)
    c.print(s.render())
    text = c.export_text()
    assert "host_not_allowed" in text and "backend_unavailable" in text
    assert "2 secret occurrence(s) scrubbed" in text
    assert text.index("allow") < text.index("deny") < text.index("error")


def test_header_shows_the_setup_literally() -> None:
    c = Console(file=io.StringIO(), width=200, record=True)
    tenants = [f"t{i}" for i in range(11)] + ["[red]x"]
    c.print(
        render_header(
            listen="127.0.0.1:8080",
            tenants=tenants,
            backends={"vault": "vault"},
            ca_path="/certs/ca.pem",
            audit_path="/audit/decisions.jsonl",
        )
    )
    text = c.export_text()
    for part in (
        "127.0.0.1:8080",
        "t0",
        "(12 in all)",
        "vault (vault)",
        "/certs/ca.pem",
        "/audit/decisions.jsonl",
    ):
        assert part in text, part


# -- tail ------------------------------------------------------------------------------
def audit_file(path: Path) -> AuditLog:
    log = AuditLog(path)
    log.append(rec(tenant="acme", path="/one"))
    log.append(rec(tenant="globex", path="/two"))
    log.append(rec(tenant="acme", decision="deny", reason="path_not_allowed", path="/three"))
    return log


@pytest.mark.parametrize(
    ("tenant", "decision", "shown"),
    [
        pytest.param(None, None, {"/one", "/two", "/three"}, id="all"),
        pytest.param("acme", None, {"/one", "/three"}, id="tenant"),
        pytest.param(None, "deny", {"/three"}, id="decision"),
        pytest.param("globex", "deny", set(), id="both"),
    ],
)
def test_tail_filters(
    tmp_path: Path, tenant: str | None, decision: str | None, shown: set[str]
) -> None:
    path = tmp_path / "audit.jsonl"
    audit_file(path).close()
    c = console(False)
    assert tail(path, follow=False, tenant=tenant, decision=decision, console=c) == 0
    out = output(c)
    assert {p for p in ("/one", "/two", "/three") if f":443{p} " in out} == shown


def test_tail_warns_on_bad_and_partial_lines(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    audit_file(path).close()
    with path.open("ab") as f:
        f.write(b"not json\n" + b'{"ts":"2024-')
    c = console(False)
    assert tail(path, follow=False, tenant=None, decision=None, console=c) == 0
    out = output(c)
    assert "line 4: not a JSON audit record" in out
    assert "line 5: partial (crash or truncation)" in out
    assert "/three" in out


def test_tail_of_a_missing_file_fails(tmp_path: Path) -> None:
    c = console(False)
    assert tail(tmp_path / "nope.jsonl", follow=False, tenant=None, decision=None, console=c) == 1
    assert "cannot read" in output(c)


def test_tail_follows_appends_and_rotation(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = audit_file(path)
    c = console(False)
    codes: list[int] = []
    t = threading.Thread(
        target=lambda: codes.append(
            tail(path, follow=True, tenant=None, decision=None, console=c, poll=0.01, max_idle=1.0)
        )
    )
    t.start()
    time.sleep(0.1)
    log.append(rec(path="/four"))
    assert log.rotate() is not None
    log.append(rec(path="/five"))
    log.close()
    t.join(timeout=20)
    assert not t.is_alive() and codes == [0]
    out = output(c)
    for p in ("/one", "/two", "/three", "/four", "/five"):
        assert f":443{p} " in out, p
    assert out.count(":443/four ") == 1, "nothing is shown twice"


def test_tail_follow_waits_for_the_file_and_stops_when_idle(tmp_path: Path) -> None:
    path = tmp_path / "later.jsonl"
    c = console(False)
    codes: list[int] = []
    t = threading.Thread(
        target=lambda: codes.append(
            tail(path, follow=True, tenant=None, decision=None, console=c, poll=0.01, max_idle=1.0)
        )
    )
    t.start()
    time.sleep(0.1)
    audit_file(path).close()
    t.join(timeout=20)
    assert codes == [0] and "/three" in output(c)
    started = time.monotonic()
    assert (
        tail(
            path,
            follow=True,
            tenant=None,
            decision=None,
            console=console(False),
            poll=0.01,
            max_idle=0.2,
        )
        == 0
    )
    assert time.monotonic() - started < 5


def test_a_sent_record_shows_as_sent_and_is_counted_once() -> None:
    """Write-ahead: the sent record of an exchange is shown (the value is on
    its way) and the summary counts the exchange once, by its done record."""
    sent = rec(phase="sent", status=None, decision="allow")
    assert "status=sent" in render_plain(sent)
    assert " sent" in render_record(sent).plain
    summary = Summary()
    summary.add(sent)
    summary.add(rec(phase="done", status=200, decision="allow"))
    assert summary.total == 1


def test_egress_report_records_are_marked() -> None:
    r = {**rec(decision="pass", reason="egress_denied", status=200), "report": True}
    for line in (render_record(r).plain, render_plain(r)):
        assert "egress_denied (report)" in line
    plain = rec(decision="deny", reason="private_address", status=403)
    assert "(report)" not in render_plain(plain) and "private_address" in render_plain(plain)


def test_the_live_feed_shows_an_exchange_once_when_it_ends() -> None:
    """Write-ahead: the live feed skips the sent record (tail shows both)."""
    feed = Feed(Console(file=io.StringIO(), force_terminal=False), plain=True, interval=60)
    feed.push(rec(phase="sent", status=None))
    feed.push(rec(phase="done", status=200))
    assert len(feed._pending) == 1 and feed._pending[0]["phase"] == "done"
    feed.close()
