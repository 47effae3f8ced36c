from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from broker.tls import ca, trust


class FakeRunner:
    def __init__(self, returncode: int = 0, raises: Exception | None = None) -> None:
        self.calls: list[list[str]] = []
        self.returncode, self.raises = returncode, raises

    def __call__(self, cmd: Sequence[str]) -> subprocess.CompletedProcess[str]:
        self.calls.append(list(cmd))
        if self.raises is not None:
            raise self.raises
        return subprocess.CompletedProcess(list(cmd), self.returncode, "", "E: boom\n")


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    files, _ = ca.init_ca(tmp_path_factory.mktemp("ca"))
    return files.cert


def _installed(root: Path, name: str = trust.DEFAULT_NAME) -> Path:
    return root / trust.DEBIAN_DIR / name


def test_debian_install_copies_and_updates(tmp_path: Path, cert: Path) -> None:
    run = FakeRunner()
    result = trust.install_ca(cert, root=tmp_path, runner=run, platform="debian")
    dest = _installed(tmp_path)
    assert dest.read_bytes() == cert.read_bytes()
    assert oct(dest.stat().st_mode & 0o777) == "0o644"
    assert result.executed and result.platform == "debian"
    assert len(run.calls) == 1 and run.calls[0][0] == "update-ca-certificates"
    # a non-default root never points the tool at the real system store
    assert "--localcertsdir" in run.calls[0] and str(dest.parent) in run.calls[0]
    assert all(not a.startswith("/etc") and not a.startswith("/usr") for a in run.calls[0][1:])


def test_debian_install_on_the_real_root_runs_the_plain_command(cert: Path) -> None:
    assert trust._update_cmd(Path("/")) == ["update-ca-certificates"]


@pytest.mark.parametrize(
    "run",
    [
        pytest.param(FakeRunner(returncode=1), id="exit-1"),
        pytest.param(FakeRunner(raises=FileNotFoundError("update-ca-certificates")), id="missing"),
    ],
)
def test_failed_update_rolls_back(tmp_path: Path, cert: Path, run: FakeRunner) -> None:
    with pytest.raises(trust.TrustError, match="update-ca-certificates"):
        trust.install_ca(cert, root=tmp_path, runner=run, platform="debian")
    assert not _installed(tmp_path).exists()


def test_debian_uninstall(tmp_path: Path, cert: Path) -> None:
    trust.install_ca(cert, root=tmp_path, runner=FakeRunner(), platform="debian")
    run = FakeRunner()
    result = trust.uninstall_ca(cert, root=tmp_path, runner=run, platform="debian")
    assert result.executed and not _installed(tmp_path).exists()
    assert run.calls[0][0] == "update-ca-certificates" and run.calls[0][-1] == "--fresh"


def test_uninstall_when_not_installed_does_nothing(tmp_path: Path, cert: Path) -> None:
    run = FakeRunner()
    result = trust.uninstall_ca(cert, root=tmp_path, runner=run, platform="debian")
    assert not result.executed and "not installed" in result.message and run.calls == []


def test_install_refuses_a_non_certificate(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("nope")
    with pytest.raises(trust.TrustError, match="not a PEM certificate"):
        trust.install_ca(bad, root=tmp_path, runner=FakeRunner(), platform="debian")


@pytest.mark.parametrize(
    ("platform", "install", "uninstall"),
    [
        pytest.param(
            "rhel",
            (
                "sudo cp {c} /etc/pki/ca-trust/source/anchors/keybroker-ca.crt",
                "sudo update-ca-trust",
            ),
            ("sudo rm /etc/pki/ca-trust/source/anchors/keybroker-ca.crt", "sudo update-ca-trust"),
            id="rhel",
        ),
        pytest.param(
            "macos",
            (
                "sudo security add-trusted-cert -d -r trustRoot "
                "-k /Library/Keychains/System.keychain {c}",
            ),
            ("sudo security remove-trusted-cert -d {c}", "sudo security delete-certificate -Z "),
            id="macos",
        ),
        pytest.param(
            "windows",
            ('certutil -addstore -f Root "{c}"',),
            ("certutil -delstore Root ",),
            id="win",
        ),
    ],
)
def test_other_platforms_get_commands_not_execution(
    tmp_path: Path,
    cert: Path,
    platform: trust.Platform,
    install: tuple[str, ...],
    uninstall: tuple[str, ...],
) -> None:
    run = FakeRunner()
    got = trust.install_ca(cert, root=tmp_path, runner=run, platform=platform)
    assert not got.executed and got.commands == tuple(s.format(c=cert) for s in install)
    got = trust.uninstall_ca(cert, root=tmp_path, runner=run, platform=platform)
    assert not got.executed and len(got.commands) == len(uninstall)
    for line, prefix in zip(got.commands, uninstall, strict=True):
        assert line.startswith(prefix.format(c=cert))
    assert run.calls == [] and not (tmp_path / "etc").exists()


def test_unknown_platform_lists_every_way(tmp_path: Path, cert: Path) -> None:
    got = trust.install_ca(cert, root=tmp_path, runner=FakeRunner(), platform="unknown")
    assert not got.executed and "unknown platform" in got.message
    assert {c.split(":")[0] for c in got.commands} == {"rhel", "macos", "windows", "debian"}


@pytest.mark.skipif(sys.platform in ("darwin", "win32"), reason="decided by sys.platform there")
@pytest.mark.parametrize(
    ("marker", "expected"),
    [
        pytest.param("usr/sbin/update-ca-certificates", "debian", id="debian-tool"),
        pytest.param("etc/debian_version", "debian", id="debian-version"),
        pytest.param("usr/bin/update-ca-trust", "rhel", id="rhel-tool"),
        pytest.param("etc/redhat-release", "rhel", id="redhat-release"),
        pytest.param("etc/hostname", "unknown", id="unknown"),
    ],
)
def test_detect_platform(tmp_path: Path, marker: str, expected: str) -> None:
    (tmp_path / marker).parent.mkdir(parents=True)
    (tmp_path / marker).touch()
    assert trust.detect_platform(tmp_path) == expected


def test_in_bundle_and_installed_copies(tmp_path: Path, cert: Path) -> None:
    other, _ = ca.init_ca(tmp_path / "other")
    bundle = tmp_path / "bundle.crt"
    bundle.write_text(other.cert.read_text())
    assert not trust.in_bundle(cert, bundle)
    bundle.write_text(other.cert.read_text() + cert.read_text())
    assert trust.in_bundle(cert, bundle)
    assert not trust.in_bundle(cert, tmp_path / "missing.crt")
    assert trust.installed_copies(tmp_path) == []
    trust.install_ca(cert, root=tmp_path, runner=FakeRunner(), platform="debian")
    assert trust.installed_copies(tmp_path) == [_installed(tmp_path)]


SYSTEM_BUNDLE = Path("/") / trust.DEBIAN_BUNDLE


@pytest.mark.integration
@pytest.mark.skipif(
    not (
        hasattr(os, "geteuid")
        and os.geteuid() == 0
        and Path("/etc/debian_version").exists()
        and shutil.which("update-ca-certificates")
        and SYSTEM_BUNDLE.exists()
    ),
    reason="needs root on Debian/Ubuntu with update-ca-certificates",
)
def test_real_system_store_round_trip(tmp_path: Path) -> None:
    files, _ = ca.init_ca(tmp_path, common_name=f"keybroker test CA {secrets.token_hex(4)}")
    name = f"keybroker-test-{secrets.token_hex(6)}.crt"  # never clobbers a real install
    try:
        result = trust.install_ca(files.cert, name=name)
        assert result.executed and result.platform == "debian"
        assert trust.in_bundle(files.cert, SYSTEM_BUNDLE)
    finally:
        trust.uninstall_ca(files.cert, name=name)
    assert not _installed(Path("/"), name).exists()
    assert not trust.in_bundle(files.cert, SYSTEM_BUNDLE)
