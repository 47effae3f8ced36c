"""A git smart-HTTP server over TLS for tests: ``git http-backend`` (CGI)
behind :class:`tests.support.openai_stub.HTTPSServer`.

``with GitServer(ca, root, password=REAL) as git:`` serves every repository
under ``root`` at ``https://127.0.0.1:<port>/<name>.git``. A request must carry
``Authorization: Bearer <password>`` or Basic credentials whose password is
``password``; without an Authorization header it gets 401 with
``WWW-Authenticate: Basic`` (what makes git send URL credentials), with a
wrong one 403. Requests are recorded in ``git.received``.
"""

from __future__ import annotations

import base64
import binascii
import os
import shutil
import subprocess
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from tests.support.openai_stub import HTTPSServer, Request, TLSServer
from tests.support.tlsca import TestCA


def _password(auth: str) -> str | None:
    scheme, _, cred = auth.partition(" ")
    if scheme.lower() == "bearer":
        return cred
    if scheme.lower() == "basic":
        try:
            return base64.b64decode(cred, validate=True).decode().partition(":")[2]
        except (binascii.Error, UnicodeDecodeError):
            return None
    return None


class _GitHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: TLSServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _plain(self, status: int, text: str, extra: dict[str, str] | None = None) -> None:
        body = text.encode()
        self.send_response(status)
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("content-length") or 0))

    def _handle(self) -> None:
        git: GitServer = self.server.owner  # type: ignore[assignment]
        body = self._body()
        headers = {k.lower(): v for k, v in self.headers.items()}
        git.record(Request(self.command, self.path, headers, body))
        auth = headers.get("authorization")
        if auth is None:
            return self._plain(
                401, "authentication required\n", {"WWW-Authenticate": 'Basic realm="git"'}
            )
        if _password(auth) != git.password:
            return self._plain(403, "wrong credentials\n")
        path, _, query = self.path.partition("?")
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": str(git.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "GIT_CONFIG_NOSYSTEM": "1",
            "HOME": str(git.root),
            "REQUEST_METHOD": self.command,
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "CONTENT_TYPE": headers.get("content-type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_USER": "agent",
            "REMOTE_ADDR": "127.0.0.1",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "GATEWAY_INTERFACE": "CGI/1.1",
        }
        for name in ("content-encoding", "git-protocol"):
            if name in headers:
                env["HTTP_" + name.upper().replace("-", "_")] = headers[name]
        out = subprocess.run(
            [git.git, "http-backend"],
            input=body,
            env=env,
            capture_output=True,
            timeout=30,
            check=False,
        ).stdout
        head, sep, payload = out.partition(b"\r\n\r\n")
        if not sep:
            head, _, payload = out.partition(b"\n\n")
        status, extra = 200, {}
        for line in head.decode("latin-1").splitlines():
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.split()[0])
            elif name:
                extra[name.strip()] = value.strip()
        self.send_response(status)
        for k, v in extra.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = _handle


class GitServer(HTTPSServer):
    handler = _GitHandler

    def __init__(self, ca: TestCA, root: Path, password: str) -> None:
        self.git, self.root, self.password = shutil.which("git") or "git", root, password
        super().__init__(ca)

    def __enter__(self) -> GitServer:
        super().__enter__()
        return self

    @staticmethod
    def missing() -> str | None:
        """Why this machine cannot serve git, or None."""
        if shutil.which("git") is None:
            return "git is not installed"
        out = subprocess.run(["git", "--exec-path"], capture_output=True, text=True, check=False)
        if not (Path(out.stdout.strip()) / "git-http-backend").is_file():
            return "git-http-backend is not installed (needed for a smart-HTTP server)"
        return None

    def make_repo(self, name: str, files: dict[str, str]) -> str:
        """A bare repository ``name``.git with one commit holding ``files``;
        returns the commit id."""
        work = self.root / f".{name}-work"
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.root),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_AUTHOR_NAME": "t",
            "GIT_AUTHOR_EMAIL": "t@x",
            "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@x",
        }

        def run(*args: str, cwd: Path = work) -> str:
            return subprocess.run(
                [self.git, *args],
                cwd=cwd,
                env=env,
                check=True,
                capture_output=True,
                text=True,
                timeout=30,
            ).stdout.strip()

        work.mkdir(parents=True)
        run("init", "-q", "-b", "main")
        for rel, text in files.items():
            (work / rel).write_text(text)
        run("add", "-A")
        run("commit", "-q", "-m", "initial")
        run("clone", "-q", "--bare", str(work), str(self.root / f"{name}.git"), cwd=self.root)
        return run("rev-parse", "HEAD")
