"""Runs the real ``keybroker run`` in a subprocess for integration tests."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.support.net import free_port, port_open, wait_for

REPO = Path(__file__).resolve().parents[2]


class Proxy:
    def __init__(
        self,
        policy: dict[str, Any],
        workdir: Path,
        *,
        env: dict[str, str] | None = None,
        extra_args: tuple[str, ...] = (),
        quiet: bool = False,
        inherit_output: bool = False,
    ) -> None:
        self.inherit_output = inherit_output
        self.policy = policy
        self.workdir = workdir
        self.env = env or {}
        self.extra_args = extra_args
        self.quiet = quiet
        self.port = free_port()
        self.config = workdir / "policy.yaml"
        self.out_path = workdir / "proxy.out"
        self.proc: subprocess.Popen[bytes] | None = None

    # -- lifecycle -----------------------------------------------------------------
    def write_policy(self, policy: dict[str, Any] | None = None) -> None:
        if policy is not None:
            self.policy = policy
        self.config.write_text(yaml.safe_dump(self.policy, sort_keys=False))

    def start(self, timeout: float = 30.0) -> Proxy:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.write_policy()
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
        cmd = [
            sys.executable,
            "-m",
            "broker.cli",
            "run",
            "--config",
            str(self.config),
            "--listen",
            f"127.0.0.1:{self.port}",
            *self.extra_args,
        ]
        if self.quiet:
            cmd.append("--quiet")
        if self.inherit_output:
            self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdin=subprocess.DEVNULL)
        else:
            with self.out_path.open("ab") as out:
                self.proc = subprocess.Popen(
                    cmd,
                    cwd=REPO,
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
        ok = wait_for(
            lambda: port_open(self.port) or self.proc is None or self.proc.poll() is not None,
            timeout,
        )
        if not ok or self.proc.poll() is not None:
            self.stop()
            raise RuntimeError(f"keybroker did not start:\n{self.output()}")
        return self

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        rc = self.proc.returncode
        self.proc = None
        return rc

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def reload(self, policy: dict[str, Any]) -> None:
        self.write_policy(policy)
        self.signal(signal.SIGHUP)

    def __enter__(self) -> Proxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- clients ---------------------------------------------------------------------
    def output(self) -> str:
        return self.out_path.read_text(errors="replace") if self.out_path.exists() else ""

    @property
    def ca_path(self) -> Path:
        certs = Path(self.policy.get("certs_dir", "certs"))
        base = certs if certs.is_absolute() else (self.workdir / certs)
        return (base / "keybroker-ca.pem").resolve()

    @property
    def audit_path(self) -> Path:
        p = Path(self.policy["audit"]["path"])
        return p if p.is_absolute() else (self.workdir / p).resolve()

    def url(self, tenant: str | None = None, token: str | None = None) -> str:
        if tenant is None:
            return f"http://127.0.0.1:{self.port}"
        return f"http://{tenant}:{token}@127.0.0.1:{self.port}"

    def proxies(self, tenant: str | None, token: str | None) -> dict[str, str]:
        u = self.url(tenant, token)
        return {"http": u, "https": u}

    @staticmethod
    def auth_header(tenant: str, token: str) -> str:
        return "Basic " + base64.b64encode(f"{tenant}:{token}".encode()).decode()
