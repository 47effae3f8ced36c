"""A real ``redis-server`` for tests: its own free port on 127.0.0.1, no
persistence, no daemon; stopped, killed and restarted on the same port by
the tests that need the store to fail.

The Debian package comes from apt when missing and we are root (``.ci/run``
installs it too); otherwise the tests that need it are skipped, saying why."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from tests.support.net import free_port, port_open, wait_for


def redis_binary() -> str:
    found = shutil.which("redis-server") or shutil.which("redis-server", path="/usr/sbin:/sbin")
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("redis-server is not installed (and we are not root with apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", "redis-server"]
    try:
        if subprocess.run(install, env=env, capture_output=True, timeout=300).returncode:
            subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=300)
            subprocess.run(install, env=env, capture_output=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"redis-server could not be installed ({type(exc).__name__})")
    found = shutil.which("redis-server")
    if not found:
        pytest.skip("redis-server could not be installed with apt-get")
    return found


class RedisServer:
    def __init__(self, workdir: Path, *extra: str) -> None:
        self.extra = extra
        self.binary = redis_binary()
        self.workdir = workdir
        self.port = free_port()
        self.socket = workdir / "redis.sock"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def unix_url(self) -> str:
        return f"unix://{self.socket}?db=0"

    def start(self) -> RedisServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        cmd = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--dir",
            str(self.workdir),
            "--unixsocket",
            str(self.socket),
            "--unixsocketperm",
            "700",
            *self.extra,
        ]
        with (self.workdir / "redis.out").open("ab") as out:
            self.proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        up = lambda: port_open(self.port) and self.socket.exists()  # noqa: E731
        if not wait_for(lambda: up() or self.proc.poll() is not None, 15):
            raise RuntimeError("redis-server did not start")
        if self.proc.poll() is not None:
            raise RuntimeError((self.workdir / "redis.out").read_text())
        return self

    def kill(self) -> None:
        """SIGKILL: the store vanishes mid-flight, as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
