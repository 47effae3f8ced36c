"""Scripted DNS for a broker under test (never imported by keybroker itself).

A test puts this directory on ``PYTHONPATH`` and names a JSON script in
``KB_FAKE_DNS``: ``{"name": [[answers of lookup 1], [answers of lookup 2], ...]}``
(the last answer list repeats; an empty list is NXDOMAIN). Python imports
``sitecustomize`` at start-up, so ``socket.getaddrinfo`` is scripted for the
whole process: keybroker's own resolver *and* any lookup mitmproxy would make
when it connects. Each scripted lookup appends the name to ``<script>.log``.
Names not in the script go to the real resolver.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from typing import Any

_PATH = os.environ.get("KB_FAKE_DNS")

if _PATH:
    _real = socket.getaddrinfo
    with open(_PATH, encoding="utf-8") as _f:
        _SCRIPT: dict[str, list[list[str]]] = json.load(_f)
    _count: dict[str, int] = {}
    _lock = threading.Lock()

    def _fake(
        host: Any, port: Any, family: int = 0, type: int = 0, proto: int = 0, flags: int = 0
    ) -> Any:
        name = host.decode() if isinstance(host, bytes) else (host or "")
        key = name.lower().rstrip(".")
        if key not in _SCRIPT:
            return _real(host, port, family, type, proto, flags)
        with _lock:
            i = _count.get(key, 0)
            _count[key] = i + 1
            with open(f"{_PATH}.log", "a", encoding="utf-8") as log:
                log.write(key + "\n")
        answers = _SCRIPT[key][min(i, len(_SCRIPT[key]) - 1)]
        if not answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        p = int(port or 0)
        out = []
        for a in answers:
            fam = socket.AF_INET6 if ":" in a else socket.AF_INET
            if family in (0, fam):
                sa = (a, p) if fam == socket.AF_INET else (a, p, 0, 0)
                out.append((fam, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", sa))
        return out

    socket.getaddrinfo = _fake
