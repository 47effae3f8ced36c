"""Is a listen address free? ``keybroker run`` asks before it starts.

Worker processes bind with SO_REUSEPORT so they can share one address, and
the kernel lets *any* process of the same user that sets it join them: a
second ``keybroker run --workers 2`` with another policy used to bind the
same port without an error and take half the connections. So before binding,
the broker tries the address once *without* SO_REUSEPORT: the kernel refuses
that while anyone listens there, reuse-port or not."""

from __future__ import annotations

import errno
import socket


def in_use_message(host: str, port: int) -> str | None:
    """None when ``host:port`` can be bound; else what is wrong and what to do."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        return f"cannot listen on {where}: {exc.strerror}"
    for family, kind, proto, _name, addr in infos[:1]:
        s = socket.socket(family, kind, proto)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio binds
            s.bind(addr)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return (
                    f"{where} is already in use (another keybroker, or another program); "
                    "stop it, or listen elsewhere with --listen HOST:PORT or the policy's listen"
                )
            return f"cannot listen on {where}: {exc.strerror or exc}; choose another with --listen"
        finally:
            s.close()
    return None
