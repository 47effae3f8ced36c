"""``mitmdump -s addons/keybroker.py --set keybroker_config=FILE`` works too."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from tests.support.net import free_port, port_open, wait_for
from tests.support.openbao import OpenBao
from tests.support.proxy import REPO
from tests.support.scenario import Scenario

pytestmark = pytest.mark.integration


def test_mitmdump_script(sc: Scenario, openbao: OpenBao, upstream: Any, tmp_path: Path) -> None:
    policy = sc.policy(
        audit={"path": str(tmp_path / "audit.jsonl")}, certs_dir=str(tmp_path / "certs")
    )
    cfg = tmp_path / "policy.yaml"
    cfg.write_text(yaml.safe_dump(policy))
    port = free_port()
    mitmdump = Path(sys.executable).parent / "mitmdump"
    env = {**os.environ, **sc.env(openbao.root_token), "HOME": str(tmp_path)}
    log = (tmp_path / "mitmdump.out").open("wb")
    proc = subprocess.Popen(
        [
            str(mitmdump),
            "-q",
            "--listen-host",
            "127.0.0.1",
            "--listen-port",
            str(port),
            "-s",
            str(REPO / "addons" / "keybroker.py"),
            "--set",
            f"keybroker_config={cfg}",
        ],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        assert wait_for(lambda: port_open(port) or proc.poll() is not None, 30)
        assert proc.poll() is None, (tmp_path / "mitmdump.out").read_text()
        proxies = {"https": f"http://acme:{sc.acme.token}@127.0.0.1:{port}"}
        ca = tmp_path / "certs" / "keybroker-ca.pem"
        assert wait_for(ca.exists, 10), "the addon must make mitmproxy use the keybroker CA"
        upstream.clear()
        base = f"https://127.0.0.1:{sc.upstream_port}"
        ok = requests.get(
            f"{base}/echo/s",
            headers={"Authorization": "<<secret:stripe>>"},
            proxies=proxies,
            verify=str(ca),
            timeout=20,
        )
        assert ok.status_code == 200 and sc.values["acme/stripe"] not in ok.text
        assert sc.values["acme/stripe"] in str(upstream.received[-1].headers)
        denied = requests.get(
            f"https://localhost:{sc.upstream_port}/echo/s",
            headers={"Authorization": "<<secret:stripe>>"},
            proxies=proxies,
            verify=str(ca),
            timeout=20,
        )
        assert denied.status_code == 403
        assert not (tmp_path / ".mitmproxy" / "mitmproxy-ca.pem").exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    out = (tmp_path / "mitmdump.out").read_text()
    assert sc.values["acme/stripe"] not in out
