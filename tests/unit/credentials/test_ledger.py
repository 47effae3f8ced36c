"""Minted tokens are known after a restart and in other workers (review finding 2)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from broker.credentials import ledger as ledger_mod
from broker.credentials.ledger import MintLedger
from broker.secret import SecretValue

TOKEN = "ghs_16C7e42F292c6912E7710c838347Ae178B4a"


class Wall:
    now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_a_restarted_process_knows_the_live_tokens(tmp_path: Path) -> None:
    wall = Wall()
    path = tmp_path / "certs" / "minted-tokens.jsonl"
    first = MintLedger(path, lambda t, n, v: None, wall=wall)
    first.record("acme", "gh", SecretValue(TOKEN), 3600)
    first.record("acme", "old", SecretValue(TOKEN + "x"), 10)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    wall.now += 60  # "old" has expired
    seen: list[tuple[str, str, str]] = []
    second = MintLedger(path, lambda t, n, v: seen.append((t, n, v.reveal())), wall=wall)
    assert second.load() == 1
    assert seen == [("acme", "gh", TOKEN)]


def test_another_worker_picks_up_new_tokens(tmp_path: Path) -> None:
    path = tmp_path / "minted-tokens.jsonl"
    seen: list[str] = []
    clock = [0.0]
    reader = MintLedger(path, lambda t, n, v: seen.append(v.reveal()), clock=lambda: clock[0])
    assert reader.load() == 0 and reader.sync() == 0
    MintLedger(path, lambda t, n, v: None).record("acme", "gh", SecretValue(TOKEN), 3600)
    assert reader.sync() == 0  # rate-limited
    clock[0] += ledger_mod.SYNC_EVERY
    assert reader.sync() == 1 and seen == [TOKEN]
    clock[0] += ledger_mod.SYNC_EVERY
    assert reader.sync() == 0  # nothing new


def test_compaction_drops_expired_entries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ledger_mod, "_COMPACT_OVER", 10)
    wall = Wall()
    path = tmp_path / "minted-tokens.jsonl"
    w = MintLedger(path, lambda t, n, v: None, wall=wall)
    w.record("acme", "a", SecretValue(TOKEN + "a"), 5)
    w.record("acme", "b", SecretValue(TOKEN + "b"), 3600)
    wall.now += 10
    assert MintLedger(path, lambda t, n, v: None, wall=wall).load() == 1
    text = path.read_text()
    assert TOKEN + "a" not in text and TOKEN + "b" in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
