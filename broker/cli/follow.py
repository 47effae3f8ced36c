"""``keybroker tail``: an audit file rendered as the live feed renders it,
and with ``-f`` followed through rotations. With ``--config``, every chain a
broker writes: under ``keybroker run --workers N`` each worker keeps its own,
``<stem>.w<i><suffix>`` beside the policy's ``audit.path``; tail shows (and
follows) all of them, each file in order. Records are drawn by
:mod:`broker.cli.console`."""

from __future__ import annotations

import json
import os
import re
import threading
import time
from pathlib import Path
from typing import IO, Any

from rich.console import Console
from rich.text import Text

from broker.cli.console import render_record, sanitize


def audit_files(base: Path) -> list[Path]:
    """``base`` (when it exists or nothing else does) and its worker chains."""
    pattern = re.compile(re.escape(base.stem) + r"\.w(\d+)" + re.escape(base.suffix) + "$")
    workers = sorted(
        (int(m[1]), p)
        for p in (base.parent.glob(f"{base.stem}.w*{base.suffix}") if base.parent.is_dir() else ())
        if (m := pattern.match(p.name))
    )
    files = [p for _, p in workers]
    return [base, *files] if base.exists() or not files else files


def tail_all(paths: list[Path], *, follow: bool, **kw: Any) -> int:
    """One file: :func:`tail`. Several: each in turn, or with
    ``follow`` each on its own thread (lines of different workers
    interleave as they arrive). Exit code: the worst of them."""
    if len(paths) == 1 or not follow:
        return max(tail(p, follow=follow, **kw) for p in paths)
    codes: list[int] = []
    threads = [
        threading.Thread(target=lambda p=p: codes.append(tail(p, follow=True, **kw)), daemon=True)
        for p in paths
    ]
    for t in threads:
        t.start()
    try:
        while any(t.is_alive() for t in threads):
            time.sleep(0.2)
    except KeyboardInterrupt:
        return 0
    return max(codes, default=0)


_MAX_LINE = 1 << 20


def _open(path: Path) -> tuple[IO[bytes], tuple[int, int]] | None:
    try:
        f = open(path, "rb")
        st = os.fstat(f.fileno())
    except OSError:
        return None
    return f, (st.st_dev, st.st_ino)


def tail(
    path: Path,
    *,
    follow: bool,
    tenant: str | None,
    decision: str | None,
    console: Console,
    poll: float = 0.2,
    max_idle: float | None = None,
) -> int:
    """Print the audit's records (filtered); with ``follow``, keep printing new
    ones, reopening the file when it is rotated. ``max_idle`` ends a follow
    after that many seconds without new lines. Exit code: 0, or 1 when the
    file cannot be read."""
    opened = _open(path)
    if opened is None and not follow:
        console.print(Text(f"keybroker tail: cannot read {sanitize(path, 400)}", style="red"))
        return 1
    buf, line_no, last = b"", 0, time.monotonic()

    def show(lines: list[bytes]) -> None:
        nonlocal line_no
        out: list[Text] = []
        for raw in lines:
            line_no += 1
            try:
                rec = json.loads(raw.decode("utf-8"))
                if not isinstance(rec, dict):
                    raise ValueError
            except ValueError:
                out.append(Text(f"line {line_no}: not a JSON audit record", style="dim yellow"))
                continue
            if (tenant is None or rec.get("tenant") == tenant) and (
                decision is None or rec.get("decision") == decision
            ):
                out.append(render_record(rec))
        if out:
            if console.is_terminal:
                console.print(Text("\n").join(out), no_wrap=True, overflow="ellipsis")
            else:  # piped: whole lines, never cut at the width rich guesses; and
                # flushed, so `tail -f | grep` sees each batch as it comes
                console.print(Text("\n").join(out), soft_wrap=True)
                console.file.flush()

    def partial(rest: bytes) -> None:
        if rest:
            console.print(Text(f"line {line_no + 1}: partial (crash or truncation)", style="dim"))

    try:
        while True:  # bounded by EOF without follow, by max_idle or Ctrl-C with it
            chunk = opened[0].read(1 << 16) if opened else b""
            if chunk:
                *lines, buf = (buf + chunk).split(b"\n")
                show(lines)
                if len(buf) > _MAX_LINE:  # not a record: don't hold it
                    partial(buf)
                    buf = b""
                last = time.monotonic()
                continue
            if not follow:
                break
            try:
                st = os.stat(path)
                ident, size = (st.st_dev, st.st_ino), st.st_size
            except OSError:
                ident, size = None, 0
            if ident is not None and (opened is None or ident != opened[1]):
                if opened:  # rotated or replaced: finish the old file, then read the new one
                    *lines, buf = (buf + opened[0].read()).split(b"\n")
                    show(lines)
                    opened[0].close()
                    partial(buf)
                buf, line_no, opened = b"", 0, _open(path)
                if opened:
                    continue
            if opened and ident is not None and size < opened[0].tell():
                opened[0].seek(0)  # truncated in place
                buf, line_no = b"", 0
                continue
            if max_idle is not None and time.monotonic() - last >= max_idle:
                break
            time.sleep(poll)
    except KeyboardInterrupt:
        pass
    finally:
        if opened:
            opened[0].close()
    partial(buf)
    return 0
