"""A server in a process of its own on loopback, for the demo, the benchmarks, the server-load fit
and the tests: `neurosurgeon serve BUNDLE --port 0`, whose real port is read from the line the
server prints once it listens (no race with another process taking a port picked beforehand)."""

from __future__ import annotations

import contextlib
import os
import re
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..runtime.auth import authorization_header
from ..runtime.errors import NeurosurgeonError

__all__ = ["ServerProcess", "ServerStartError", "start_server"]

READY_TIMEOUT_S = 120.0
_ANNOUNCED = re.compile(r"^serving .* on (https?)://127\.0\.0\.1:(\d+)$", re.MULTILINE)


class ServerStartError(NeurosurgeonError):
    """The server process exited, or did not become ready in time; the message ends with its output."""


@dataclass
class ServerProcess:
    url: str
    port: int
    process: subprocess.Popen
    token: str | None
    log_path: Path

    def output(self) -> str:
        """Everything the server printed so far (stdout and stderr)."""
        return self.log_path.read_text(errors="replace")

    def headers(self) -> dict[str, str]:
        """The Authorization header this server wants, if any."""
        return authorization_header(self.token) if self.token else {}

    def stop(self) -> None:
        """Terminate, then kill if it does not exit within 10 s."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextlib.contextmanager
def start_server(bundle_path: str | Path, token: str | None = None, port: int | None = None,
                 extra_env: dict | None = None, extra_args: list[str] | tuple[str, ...] = (),
                 ca_file: str | Path | None = None):
    """Start `neurosurgeon serve` for `bundle_path` on 127.0.0.1 and yield a ServerProcess once
    /v2/health/ready answers 200; stop it on exit. With `port` None the server binds port 0 and the
    port is read from what it prints. `extra_args` go to `neurosurgeon serve` as they are (with
    --ssl-certfile, `ca_file` is what the readiness probe verifies the certificate with)."""
    with tempfile.TemporaryDirectory(prefix="neurosurgeon-server-") as tmp:
        log_path = Path(tmp) / "server.log"
        args = [sys.executable, "-m", "neurosurgeon", "serve", str(bundle_path), "--host", "127.0.0.1",
                "--port", str(port or 0), *extra_args]
        if token is not None:
            token_file = Path(tmp) / "token"
            token_file.write_text(token + "\n")
            args += ["--token-file", str(token_file)]
        with open(log_path, "wb") as log:  # a file, not a pipe: a chatty server can never block on a full pipe
            process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(extra_env or {})})
        server = ServerProcess("", 0, process, token, log_path)
        try:
            scheme, server.port = _wait_for_port(server)
            server.url = f"{scheme}://127.0.0.1:{server.port}"
            _wait_until_ready(server, ca_file)
            yield server
        finally:
            server.stop()


def _wait_for_port(server: ServerProcess) -> tuple[str, int]:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        found = _ANNOUNCED.search(server.output())
        if found:
            return found.group(1), int(found.group(2))
        _check_alive(server)
        time.sleep(0.05)
    raise ServerStartError(f"the server did not start listening within {READY_TIMEOUT_S:.0f} s:\n{server.output()}")


def _wait_until_ready(server: ServerProcess, ca_file: str | Path | None = None) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    request = urllib.request.Request(f"{server.url}/v2/health/ready", headers=server.headers())
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None) if server.url.startswith("https") else None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(request, timeout=5, context=context) as answer:
                if answer.status == 200:
                    return
        except urllib.error.HTTPError as err:
            if err.code != 503:  # anything but "not ready yet" will not go away by waiting
                raise ServerStartError(f"{server.url}/v2/health/ready answered {err.code}: {err.read()!r}") from None
        except (urllib.error.URLError, ConnectionError):
            pass
        _check_alive(server)
        time.sleep(0.05)
    raise ServerStartError(f"{server.url}/v2/health/ready did not answer 200 within {READY_TIMEOUT_S:.0f} s:\n"
                           f"{server.output()}")


def _check_alive(server: ServerProcess) -> None:
    if server.process.poll() is not None:
        raise ServerStartError(f"the server exited with code {server.process.returncode}:\n{server.output()}")
