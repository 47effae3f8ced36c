"""System trust for the keybroker CA (``keybroker ca install`` / ``ca uninstall``).

Debian and Ubuntu (anything with ``update-ca-certificates``) are changed
here; for other platforms the exact commands are returned to be printed,
never executed. Every function takes ``root`` (the file-system root) and
``runner`` (runs one command) so tests use a temporary root and a fake runner.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes

Platform = Literal["debian", "rhel", "macos", "windows", "unknown"]
Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]

DEFAULT_NAME = "keybroker-ca.crt"
DEBIAN_DIR = Path("usr/local/share/ca-certificates")
DEBIAN_BUNDLE = Path("etc/ssl/certs/ca-certificates.crt")
RHEL_DIR = Path("etc/pki/ca-trust/source/anchors")
MACOS_KEYCHAIN = "/Library/Keychains/System.keychain"
COMMAND_TIMEOUT = 300.0


class TrustError(Exception):
    """Installing or removing failed; the message says what to do."""


@dataclass(frozen=True)
class TrustResult:
    platform: Platform
    executed: bool
    """True when the system store was changed here; False: run ``commands`` yourself."""
    commands: tuple[str, ...]
    message: str


def run_command(cmd: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(cmd), capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False
    )


def detect_platform(root: Path = Path("/")) -> Platform:
    if sys.platform == "darwin":
        return "macos"
    if sys.platform == "win32":
        return "windows"
    if any((root / p).exists() for p in ("usr/sbin/update-ca-certificates", "etc/debian_version")):
        return "debian"
    if any((root / p).exists() for p in ("usr/bin/update-ca-trust", "etc/redhat-release")):
        return "rhel"
    return "unknown"


def install_ca(
    cert: Path,
    *,
    root: Path = Path("/"),
    runner: Runner = run_command,
    platform: Platform | None = None,
    name: str = DEFAULT_NAME,
) -> TrustResult:
    _load(cert)
    plat = platform or detect_platform(root)
    if plat != "debian":
        return _manual(plat, _install_commands(cert, name), "install")
    dest = root / DEBIAN_DIR / name
    cmd = _update_cmd(root)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(cert.read_bytes())
        dest.chmod(0o644)
    except PermissionError:
        raise TrustError(
            f"writing {dest} needs root: run `sudo keybroker ca install --config FILE`"
        ) from None
    try:
        _run(runner, cmd)
    except TrustError:
        dest.unlink(missing_ok=True)
        raise
    return TrustResult(
        "debian",
        True,
        (shlex.join(["cp", str(cert), str(dest)]), shlex.join(cmd)),
        f"installed {dest} and updated {root / DEBIAN_BUNDLE}",
    )


def uninstall_ca(
    cert: Path,
    *,
    root: Path = Path("/"),
    runner: Runner = run_command,
    platform: Platform | None = None,
    name: str = DEFAULT_NAME,
) -> TrustResult:
    plat = platform or detect_platform(root)
    if plat != "debian":
        return _manual(plat, _uninstall_commands(cert, name), "uninstall")
    dest = root / DEBIAN_DIR / name
    if not dest.exists():
        return TrustResult("debian", False, (), f"not installed: {dest} does not exist")
    cmd = [*_update_cmd(root), "--fresh"]
    try:
        dest.unlink()
    except PermissionError:
        raise TrustError(
            f"removing {dest} needs root: run `sudo keybroker ca uninstall --config FILE`"
        ) from None
    _run(runner, cmd)
    return TrustResult(
        "debian",
        True,
        (shlex.join(["rm", str(dest)]), shlex.join(cmd)),
        f"removed {dest} and rebuilt {root / DEBIAN_BUNDLE}",
    )


def installed_copies(root: Path = Path("/"), name: str = DEFAULT_NAME) -> list[Path]:
    """Where ``ca install`` left a copy under ``root`` (Debian and RHEL paths)."""
    return [p for p in (root / DEBIAN_DIR / name, root / RHEL_DIR / name) if p.exists()]


def in_bundle(cert: Path, bundle: Path) -> bool:
    """Whether the PEM certificate ``cert`` is one of the entries of ``bundle``."""
    try:
        body = _pem_body(cert.read_text(encoding="ascii"))
        text = "".join(bundle.read_text(encoding="utf-8", errors="replace").split())
    except OSError:
        return False
    return bool(body) and body in text


def _pem_body(pem: str) -> str:
    start = pem.index("-----BEGIN CERTIFICATE-----") + len("-----BEGIN CERTIFICATE-----")
    end = pem.index("-----END CERTIFICATE-----", start)
    return "".join(pem[start:end].split())


def _load(cert: Path) -> None:
    try:
        x509.load_pem_x509_certificate(cert.read_bytes())
    except (OSError, ValueError) as exc:
        raise TrustError(
            f"{cert}: not a PEM certificate ({exc}); run `keybroker ca init`"
        ) from None


def _update_cmd(root: Path) -> list[str]:
    if root == Path("/"):
        return ["update-ca-certificates"]
    # Keep a non-default root self-contained: never touch the real system store.
    return [
        "update-ca-certificates",
        "--certsconf", str(root / "etc/ca-certificates.conf"),
        "--certsdir", str(root / "usr/share/ca-certificates"),
        "--localcertsdir", str(root / DEBIAN_DIR),
        "--etccertsdir", str(root / DEBIAN_BUNDLE.parent),
        "--hooksdir", str(root / "etc/ca-certificates/update.d"),
    ]  # fmt: skip


def _run(runner: Runner, cmd: list[str]) -> None:
    try:
        done = runner(cmd)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TrustError(f"`{shlex.join(cmd)}` could not run: {exc}") from None
    if done.returncode != 0:
        tail = (done.stderr or done.stdout or "").strip().splitlines()[-3:]
        raise TrustError(
            f"`{shlex.join(cmd)}` exited {done.returncode}: {' / '.join(tail) or 'no output'}"
        )


def _install_commands(cert: Path, name: str) -> dict[str, tuple[str, ...]]:
    c = shlex.quote(str(cert))
    rhel = (f"sudo cp {c} /{RHEL_DIR / name}", "sudo update-ca-trust")
    mac = (f"sudo security add-trusted-cert -d -r trustRoot -k {MACOS_KEYCHAIN} {c}",)
    win = (f'certutil -addstore -f Root "{cert}"',)
    deb = (f"sudo cp {c} /{DEBIAN_DIR / name}", "sudo update-ca-certificates")
    return {"rhel": rhel, "macos": mac, "windows": win, "debian": deb}


def _uninstall_commands(cert: Path, name: str) -> dict[str, tuple[str, ...]]:
    c = shlex.quote(str(cert))
    try:
        parsed = x509.load_pem_x509_certificate(cert.read_bytes())
        sha1 = parsed.fingerprint(hashes.SHA1()).hex().upper()  # noqa: S303 - keychain lookup key
        serial = format(parsed.serial_number, "x")
    except (OSError, ValueError):
        sha1, serial = "<SHA-1 of the old CA>", "<serial of the old CA>"
    return {
        "rhel": (f"sudo rm /{RHEL_DIR / name}", "sudo update-ca-trust"),
        "macos": (
            f"sudo security remove-trusted-cert -d {c}",
            f"sudo security delete-certificate -Z {sha1} {MACOS_KEYCHAIN}",
        ),
        "windows": (f"certutil -delstore Root {serial}",),
        "debian": (f"sudo rm /{DEBIAN_DIR / name}", "sudo update-ca-certificates --fresh"),
    }


def _manual(plat: Platform, table: dict[str, tuple[str, ...]], verb: str) -> TrustResult:
    if plat in table:
        return TrustResult(plat, False, table[plat], f"to {verb} the CA on {plat}, run:")
    cmds = tuple(f"{p}: {c}" for p, cs in table.items() for c in cs)
    return TrustResult(
        plat, False, cmds, f"unknown platform; to {verb} the CA run the lines for yours:"
    )
