"""``make demo``: an embedded OpenBao dev server, a local HTTPS demo API and
keybroker; a scripted agent makes allowed, denied and scrubbed calls while the
live feed runs; then everything stops. Exit 0 when every call did what it
should."""

from __future__ import annotations

import io
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import requests
from rich.console import Console
from rich.table import Table

from tests.support.openbao import OpenBao
from tests.support.proxy import Proxy
from tests.support.scenario import Scenario
from tests.support.tlsca import TestCA
from tests.support.upstream import Upstream

out = Console(stderr=False)


@dataclass
class Step:
    title: str
    tenant: str
    host: str
    path: str
    auth: str
    expect: int


STEPS = [
    Step(
        "allowed: acme calls the API with <<secret:stripe>>",
        "acme",
        "127.0.0.1",
        "/status/200",
        "Bearer <<secret:stripe>>",
        200,
    ),
    Step(
        "denied: same placeholder, a host the secret is not allowed for",
        "acme",
        "localhost",
        "/status/200",
        "Bearer <<secret:stripe>>",
        403,
    ),
    Step(
        "denied: tenant globex names acme's secret",
        "globex",
        "127.0.0.1",
        "/status/200",
        "Bearer <<secret:anywhere>>",
        403,
    ),
    Step(
        "scrubbed: the API echoes the key back; the agent sees the placeholder",
        "acme",
        "127.0.0.1",
        "/echo/whoami",
        "Bearer <<secret:stripe>>",
        200,
    ),
]


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    svg = Path(args[args.index("--svg") + 1]) if "--svg" in args else None
    with tempfile.TemporaryDirectory(prefix="keybroker-demo-") as tmp:
        work = Path(tmp)
        out.rule("[bold]keybroker demo")
        out.print("starting an OpenBao dev server, a local HTTPS demo API and keybroker …")
        ca = TestCA(work / "demo-api-ca")
        with OpenBao() as bao, Upstream(ca) as api:
            sc = Scenario(
                upstream_port=api.port,
                vault_url=bao.url,
                upstream_ca=Path(ca.ca_path),
                workdir=work,
            )
            sc.seed_vault(bao)
            proxy = Proxy(sc.policy(), work, env=sc.env(bao.root_token), inherit_output=True)
            results = []
            with proxy:
                time.sleep(0.5)
                for step in STEPS:
                    results.append(run_step(proxy, sc, api, step))
                time.sleep(0.5)  # let the feed flush
            show(results)
            ok = all(r[-1] for r in results)
            # The work directory goes away with the demo: keep the audit.
            kept = Path(tempfile.gettempdir()) / "keybroker-demo-audit.jsonl"
            shutil.copyfile(proxy.audit_path, kept)
            kept.chmod(0o600)
            out.print(f"audit (kept): {kept}  — try: keybroker audit verify {kept}")
            if svg:
                export_feed(kept, svg)
    out.rule("[green]demo passed" if ok else "[red]demo FAILED")
    return 0 if ok else 1


def run_step(
    proxy: Proxy, sc: Scenario, api: Upstream, step: Step
) -> tuple[str, str, str, str, bool]:
    t = getattr(sc, step.tenant)
    api.clear()
    r = requests.get(
        f"https://{step.host}:{api.port}{step.path}",
        headers={"Authorization": step.auth},
        proxies=proxy.proxies(t.name, t.token),
        verify=str(proxy.ca_path),
        timeout=30,
    )
    value = sc.values["acme/stripe"]
    upstream_got = any(value in str(x.headers) for x in api.received)
    leaked = value in r.text or value in str(r.headers)
    reason = r.headers.get("x-keybroker-decision", "") or "allow"
    what = (
        "real key on the wire"
        if upstream_got
        else "nothing sent upstream"
        if not api.received
        else "sent without a key"
    )
    good = r.status_code == step.expect and not leaked and (upstream_got == (step.expect == 200))
    agent_saw = "placeholder" if "<<secret:stripe>>" in r.text else "—"
    return (
        step.title,
        f"{r.status_code} {reason}",
        what,
        agent_saw if not leaked else "LEAK",
        good,
    )


def export_feed(audit: Path, svg: Path) -> None:
    """Render this run's audit as the live feed shows it, to an SVG for the README."""
    import json

    from broker.cli.console import render_header, render_record

    rec = Console(record=True, width=118, file=io.StringIO())
    rec.print(
        render_header(
            listen="127.0.0.1:8080",
            tenants=["acme", "globex"],
            backends={"vault": "vault", "local": "env"},
            ca_path="certs/keybroker-ca.pem",
            audit_path="audit/decisions.jsonl",
        )
    )
    for line in audit.read_text().splitlines():
        rec.print(render_record(json.loads(line)))
    rec.save_svg(str(svg), title="keybroker run")
    out.print(f"feed picture: {svg}")


def show(results: list[tuple[str, str, str, str, bool]]) -> None:
    table = Table(title="what happened to each call")
    for col in ("call", "agent got", "upstream", "echo seen by agent", "ok"):
        table.add_column(col)
    for title, got, upstream, echo, good in results:
        table.add_row(title, got, upstream, echo, "[green]✓" if good else "[red]✗")
    out.print(table)


if __name__ == "__main__":
    sys.exit(main())
