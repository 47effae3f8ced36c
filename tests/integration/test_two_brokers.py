"""Two brokers never share one address or one audit chain (issue 14.4), and
``keybroker tail --config`` shows every worker's chain, whole lines when
piped (issue 14.8)."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.net import free_port, wait_for
from tests.support.openbao import OpenBao
from tests.support.proxy import REPO, Proxy
from tests.support.scenario import Scenario

pytestmark = pytest.mark.integration


def run_second(config: Path, listen: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """A second ``keybroker run`` that must refuse to start (bounded by a timeout)."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "broker.cli",
            "run",
            "--config",
            str(config),
            "--listen",
            listen,
            "--quiet",
            *extra,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def keybroker(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "broker.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def get(proxy: Proxy, sc: Scenario, path: str, auth: str) -> requests.Response:
    return requests.get(
        f"https://127.0.0.1:{sc.upstream_port}{path}",
        headers={"X-Other": auth},
        proxies=proxy.proxies("acme", sc.acme.token),
        verify=str(proxy.ca_path),
        timeout=30,
    )


@pytest.fixture(scope="module")
def workers2(sc: Scenario, openbao: OpenBao, tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp_path = tmp_path_factory.mktemp("workers2")
    policy = sc.policy(audit={"path": str(tmp_path / "a" / "decisions.jsonl")})
    with Proxy(policy, tmp_path / "one", env=sc.env(openbao.root_token),
               extra_args=("--workers", "2")) as p:  # fmt: skip
        yield p


def test_a_second_broker_on_a_served_port_refuses_to_start(
    workers2: Proxy, sc: Scenario, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    other.mkdir()
    config = other / "policy.yaml"
    first_audit = str(workers2.audit_path.parent)
    config.write_text(workers2.config.read_text().replace(first_audit, str(other)))
    for extra in ((), ("--workers", "2")):
        out = run_second(config, f"127.0.0.1:{workers2.port}", *extra)
        assert out.returncode == 1, out.stderr
        assert f"127.0.0.1:{workers2.port} is already in use" in out.stderr
        assert "--listen" in out.stderr and "--mode" not in out.stderr
    assert not (other / "decisions.w0.jsonl").exists()
    assert get(workers2, sc, "/echo/still-one", "x").status_code == 200


def test_two_brokers_never_write_one_chain(sc: Scenario, openbao: OpenBao, tmp_path: Path) -> None:
    policy = sc.policy(audit={"path": str(tmp_path / "shared.jsonl")})
    with Proxy(policy, tmp_path / "first", env=sc.env(openbao.root_token)) as first:
        out = run_second(first.config, f"127.0.0.1:{free_port()}")
        assert out.returncode == 1, out.stderr
        assert "being written by another keybroker" in out.stderr
        assert "audit.path" in out.stderr


def test_banner_names_the_worker_chains_and_tail_shows_them_whole(
    workers2: Proxy, sc: Scenario
) -> None:
    assert wait_for(lambda: "decisions.w1.jsonl" in workers2.output(), 20), workers2.output()
    assert "decisions.w0.jsonl" in workers2.output()
    long_path = "/echo/" + "p" * 150
    r = get(workers2, sc, long_path, "<<secret:stripe>>")
    assert r.status_code == 403 and r.json()["reason"] == "location_not_allowed"
    shown = keybroker("tail", "--config", str(workers2.config))
    assert shown.returncode == 0, shown.stderr
    [line] = [ln for ln in shown.stdout.splitlines() if "location_not_allowed" in ln]
    assert long_path in line, "piped output is never cut"
    assert "…" not in line


def test_tail_config_follows_every_worker_chain(tmp_path: Path) -> None:
    """`keybroker tail --config -f`, a real process, shows lines appended to
    each worker's file as they come (piped: whole lines)."""
    audit = tmp_path / "decisions.jsonl"
    config = tmp_path / "policy.yaml"
    config.write_text("version: 1\naudit: {path: decisions.jsonl}\nbackends: {}\ntenants: {}\n")
    files = [tmp_path / f"decisions.w{i}.jsonl" for i in range(2)]
    for f in files:
        f.write_text("")
    proc = subprocess.Popen(
        [sys.executable, "-m", "broker.cli", "tail", "--config", str(config), "-f"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        for i, f in enumerate(files):
            rec = {"decision": "pass", "tenant": "t", "method": "GET", "path": f"/from-w{i}"}
            with f.open("a") as out:
                out.write(json.dumps(rec) + "\n")
        assert proc.stdout is not None
        fd, seen = proc.stdout.fileno(), ""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not ("/from-w0" in seen and "/from-w1" in seen):
            if select.select([fd], [], [], 0.5)[0]:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                seen += chunk.decode("utf-8", "replace")
        assert "/from-w0" in seen and "/from-w1" in seen, seen
        assert not audit.exists()
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
