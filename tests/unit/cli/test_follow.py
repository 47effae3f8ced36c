from __future__ import annotations

import io
import socket
from pathlib import Path

from rich.console import Console

from broker.cli.address import in_use_message
from broker.cli.follow import audit_files, tail_all


def test_audit_files_are_the_base_and_every_worker_chain(tmp_path: Path) -> None:
    base = tmp_path / "decisions.jsonl"
    assert audit_files(base) == [base]
    for name in (
        "decisions.w1.jsonl",
        "decisions.w0.jsonl",
        "decisions.w10.jsonl",
        "other.w0.jsonl",
    ):
        (tmp_path / name).write_text("")
    names = [p.name for p in audit_files(base)]
    assert names == ["decisions.w0.jsonl", "decisions.w1.jsonl", "decisions.w10.jsonl"]
    base.write_text("")
    assert audit_files(base)[0] == base


def test_tail_all_follows_every_file(tmp_path: Path) -> None:
    files = [tmp_path / "a.w0.jsonl", tmp_path / "a.w1.jsonl"]
    for i, f in enumerate(files):
        f.write_text(f'{{"decision": "pass", "path": "/from-worker-{i}", "tenant": "t"}}\n')
    out = io.StringIO()
    console = Console(file=out, width=40)
    rc = tail_all(files, follow=True, tenant=None, decision=None, console=console, max_idle=0.3)
    assert rc == 0
    assert "/from-worker-0" in out.getvalue() and "/from-worker-1" in out.getvalue()


def test_an_address_in_use_is_named_with_the_listen_option() -> None:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        msg = in_use_message("127.0.0.1", port)
        assert msg is not None and "already in use" in msg and "--listen" in msg
    assert in_use_message("127.0.0.1", port) is None
