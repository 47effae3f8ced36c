"""One egress check: allowlist, then the address, resolved once
(broker/egress/check.py, broker/egress/resolve.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from broker.egress import resolve
from broker.egress.check import check
from broker.egress.resolve import LookupFailed, Pins
from broker.egress.rules import EgressRules, parse_entry, parse_network
from broker.request.decision import Reason


class Script:
    """A resolver under the test's control: answers in order, the last repeats."""

    def __init__(self, **answers: list[list[str]]) -> None:
        self.answers = {k.replace("_", "."): v for k, v in answers.items()}
        self.calls: list[str] = []

    async def __call__(self, host: str, port: int) -> Sequence[str]:
        self.calls.append(host)
        seq = self.answers.get(host)
        if seq is None:
            raise OSError("NXDOMAIN with some resolver text")
        await asyncio.sleep(0)
        return seq[min(self.calls.count(host) - 1, len(seq) - 1)]


def rules(mode: str | None, allow: Sequence[str] = (), private: Sequence[str] = ()) -> EgressRules:
    return EgressRules.build(
        mode,  # type: ignore[arg-type]
        [parse_entry(a) for a in allow],
        [parse_network(c) for c in private],
    )


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_enforce_unlisted_is_refused_before_any_lookup() -> None:
    dns = Script(evil_com=[["1.2.3.4"]])
    v = run(check(rules("enforce", ["api.ok.com"]), "evil.com", 443, Pins(), dns))
    assert (v.reason, v.refused, v.report) == (Reason.EGRESS_DENIED, True, False)
    assert dns.calls == []  # no DNS query can carry data out


def test_report_unlisted_is_forwarded_and_marked() -> None:
    dns = Script(evil_com=[["1.2.3.4"]])
    v = run(check(rules("report", ["api.ok.com"]), "evil.com", 443, Pins(), dns))
    assert (v.reason, v.refused, v.report, v.address) == (
        Reason.EGRESS_DENIED,
        False,
        True,
        "1.2.3.4",
    )


def test_listed_public_passes_and_is_pinned() -> None:
    dns, pins = Script(api_ok_com=[["1.2.3.4"]]), Pins()
    v = run(check(rules("enforce", ["api.ok.com"]), "api.ok.com", 443, pins, dns))
    assert (v.reason, v.address) == (None, "1.2.3.4")
    assert str(pins.get("api.ok.com", 443)) == "1.2.3.4"


@pytest.mark.parametrize("mode", [None, "report", "enforce"])
def test_private_refused_in_every_mode(mode: str | None) -> None:
    dns = Script(meta_test=[["169.254.169.254"]])
    v = run(check(rules(mode, ["meta.other"]), "meta.test", 443, Pins(), dns))
    if mode == "enforce":
        assert v.reason is Reason.EGRESS_DENIED  # unlisted comes first
    else:
        assert (v.reason, v.refused, v.detail) == (Reason.PRIVATE_ADDRESS, True, "link-local")


def test_private_exemptions() -> None:
    dns = Script(db_corp=[["10.1.2.3"]], other_corp=[["10.9.9.9"]])
    named = rules(None, ["db.corp:5432"])
    assert run(check(named, "db.corp", 5432, Pins(), dns)).reason is None
    # Named at 5432 only: another port of that private host stays refused.
    assert run(check(named, "db.corp", 80, Pins(), dns)).reason is Reason.PRIVATE_ADDRESS
    by_ip = rules(None, ["10.1.2.3"])
    assert run(check(by_ip, "db.corp", 443, Pins(), dns)).reason is None
    assert run(check(by_ip, "other.corp", 443, Pins(), dns)).reason is Reason.PRIVATE_ADDRESS
    by_range = rules(None, private=["10.0.0.0/8"])
    assert run(check(by_range, "other.corp", 443, Pins(), dns)).reason is None
    wildcard = rules(None, ["*.corp"])
    assert run(check(wildcard, "db.corp", 443, Pins(), dns)).reason is Reason.PRIVATE_ADDRESS


@pytest.mark.parametrize("host", ["127.0.0.1", "2130706433", "0x7f.1", "::ffff:7f00:1"])
def test_ip_literals_need_no_lookup(host: str) -> None:
    dns = Script()
    from broker.egress.rules import host_key

    v = run(check(rules(None), host_key(host), 443, Pins(), dns))
    assert v.reason is Reason.PRIVATE_ADDRESS and dns.calls == []


def test_rebinding_second_answer_is_never_used() -> None:
    """First answer public, later ones private: one lookup per connection;
    the pinned (checked) address is what every later check sees."""
    dns, pins = Script(rebind_test=[["1.2.3.4"], ["127.0.0.1"]]), Pins()
    r = rules(None)
    for _ in range(3):
        v = run(check(r, "rebind.test", 443, pins, dns))
        assert (v.reason, v.address) == (None, "1.2.3.4")
    assert dns.calls == ["rebind.test"]
    fresh = run(check(r, "rebind.test", 443, Pins(), dns))  # a new client connection
    assert fresh.reason is Reason.PRIVATE_ADDRESS


def test_mixed_answer_pins_an_allowed_address() -> None:
    dns, pins = Script(mixed_test=[["10.0.0.1", "1.2.3.4"]]), Pins()
    v = run(check(rules(None), "mixed.test", 443, pins, dns))
    assert (v.reason, v.address) == (None, "1.2.3.4")


def test_all_private_answer_is_refused_and_pinned() -> None:
    dns, pins = Script(p_test=[["10.0.0.1", "192.168.1.1"]], q_test=[]), Pins()
    v = run(check(rules(None), "p.test", 443, pins, dns))
    assert v.reason is Reason.PRIVATE_ADDRESS
    run(check(rules(None), "p.test", 443, pins, dns))
    assert dns.calls == ["p.test"]


def test_lookup_failure_is_not_pinned() -> None:
    """Nothing pinned: the upstream connection will be refused where it opens."""
    dns, pins = Script(), Pins()
    v = run(check(rules(None), "nx.test", 443, pins, dns))
    assert (v.reason, v.address) == (None, None)
    assert pins.get("nx.test", 443) is None
    v = run(check(rules("report", ["x.test"]), "nx.test", 443, pins, dns))
    assert v.report and v.address is None


def test_concurrent_requests_share_one_lookup() -> None:
    dns, pins = Script(a_test=[["1.2.3.4"], ["127.0.0.1"]]), Pins()

    async def many() -> list[str | None]:
        vs = await asyncio.gather(*(check(rules(None), "a.test", 443, pins, dns) for _ in range(5)))
        return [v.address for v in vs]

    assert run(many()) == ["1.2.3.4"] * 5
    assert dns.calls == ["a.test"]


def test_lookup_errors_keep_their_text_out() -> None:
    async def boom(host: str, port: int) -> Sequence[str]:
        raise OSError("resolver said kbcanary_secret")

    with pytest.raises(LookupFailed) as info:
        run(Pins().resolve("x.test", 443, boom))
    assert "kbcanary" not in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_pin_table_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resolve, "MAX_PINS", 2)
    pins = Pins()
    dns = Script(a_t=[["1.1.1.1"]], b_t=[["1.1.1.2"]], c_t=[["1.1.1.3"]])
    assert run(check(rules(None), "a.t", 443, pins, dns)).reason is None
    assert run(check(rules(None), "b.t", 443, pins, dns)).reason is None
    assert run(check(rules(None), "c.t", 443, pins, dns)).reason is Reason.EGRESS_DENIED
    assert run(check(rules(None), "a.t", 443, pins, dns)).reason is None  # pinned ones still work


def test_every_name_the_client_gave_must_be_listed() -> None:
    """Domain fronting: a listed CDN edge as the connection target, an unlisted
    site in SNI or Host: refused (enforce) or reported (report)."""
    dns = Script(edge_cdn_com=[["1.2.3.4"]])
    enforce = rules("enforce", ["edge.cdn.com", "*.ok.com"])
    v = run(check(enforce, "edge.cdn.com", 443, Pins(), dns, ("evil.example",)))
    assert v.reason is Reason.EGRESS_DENIED and v.refused and dns.calls == []
    v = run(check(enforce, "edge.cdn.com", 443, Pins(), dns, ("edge.cdn.com", "a.ok.com")))
    assert v.reason is None
    report = rules("report", ["edge.cdn.com"])
    v = run(check(report, "edge.cdn.com", 443, Pins(), dns, ("evil.example",)))
    assert v.reason is Reason.EGRESS_DENIED and v.report
