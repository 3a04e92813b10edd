"""What a server is told: what to serve, where, with which key, token and options, checked once
(serving/engines.py) and handed to an engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..runtime.repository import ServeOptions
from ..runtime.server import InferenceServer

__all__ = ["ANNOUNCEMENT", "ServerConfig"]

# The line printed once the socket listens; `start_server` reads the real port from it.
ANNOUNCEMENT = "serving {bundles} ({how}{failed}) on {scheme}://{address}:{port}"


@dataclass(frozen=True)
class ServerConfig:
    path: Path  # a bundle, or a folder of bundles
    host: str = "127.0.0.1"
    port: int = 8000  # 0: a free one
    token: str | None = None
    max_body_bytes: int = 256 << 20
    trust_key: bytes | None = None  # an Ed25519 public key: only bundles signed with it are served
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    options: ServeOptions = field(default_factory=ServeOptions)
    log_level: str = "warning"

    def app(self, options: ServeOptions | None = None) -> InferenceServer:
        return InferenceServer(self.path, token=self.token, max_body_bytes=self.max_body_bytes,
                               trust_key=self.trust_key, options=options or self.options)

    def announce(self, port: int, bundles: list[str], how: str, failed: list[str] = ()) -> None:
        host = self.host
        print(ANNOUNCEMENT.format(bundles=", ".join(bundles), how=how,
                                  failed=f"; not serving {', '.join(failed)}" if failed else "",
                                  scheme="https" if self.ssl_certfile else "http",
                                  address=f"[{host}]" if ":" in host else host, port=port), flush=True)
