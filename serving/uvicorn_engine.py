"""`neurosurgeon serve`: a repository's bundles (or one bundle) over Open Inference Protocol v2, under uvicorn."""

from __future__ import annotations

import logging
from pathlib import Path

import uvicorn

from ..runtime.auth import read_token
from ..runtime.errors import NeurosurgeonError
from ..runtime.repository import ServeOptions
from ..runtime.server import InferenceServer
from ..runtime.signing import read_public_key

__all__ = ["ANNOUNCEMENT", "serve"]

# The line printed once the socket listens; `start_server` reads the real port from it.
ANNOUNCEMENT = "serving {bundles} ({workers} workers each{failed}) on {scheme}://{address}:{port}"


def serve(path: str | Path, host: str = "127.0.0.1", port: int = 8000, token_file: str | Path | None = None,
          max_body_bytes: int = 256 << 20, log_level: str = "warning", ssl_certfile: str | Path | None = None,
          ssl_keyfile: str | Path | None = None, trust_key: str | Path | None = None,
          options: ServeOptions | None = None) -> None:
    """Serve a bundle, or every bundle in a folder, until interrupted, over HTTPS with a certificate
    and its key, its workers and batching as `options` say. Port 0 picks a free port; the line printed
    when the server is ready names the real one. With `trust_key` (an Ed25519 public key PEM) a
    bundle is served only if its manifest is signed with that key."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    token = read_token(token_file) if token_file is not None else None
    if (ssl_certfile is None) != (ssl_keyfile is None):
        raise NeurosurgeonError("HTTPS needs both --ssl-certfile and --ssl-keyfile")
    for pem in (ssl_certfile, ssl_keyfile):
        if pem is not None and not Path(pem).is_file():
            raise NeurosurgeonError(f"{pem}: no such file (a PEM certificate or key for HTTPS)")
    public = read_public_key(trust_key) if trust_key is not None else None
    app = InferenceServer(path, token=token, max_body_bytes=max_body_bytes, trust_key=public, options=options)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on", access_log=False,
                            ssl_certfile=str(ssl_certfile) if ssl_certfile else None,
                            ssl_keyfile=str(ssl_keyfile) if ssl_keyfile else None)
    _AnnouncingServer(config, app).run()


class _AnnouncingServer(uvicorn.Server):
    """Prints one line once the socket listens, naming the real port (also when port 0 was asked for)."""

    def __init__(self, config: uvicorn.Config, app: InferenceServer):
        super().__init__(config)
        self.app = app

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        if self.started:
            host = self.config.host
            port = self.servers[0].sockets[0].getsockname()[1]
            repository = self.app.repository
            failed = f"; not serving {', '.join(repository.failed)}" if repository.failed else ""
            workers = next(iter(repository.bundles.values())).pool.workers
            print(ANNOUNCEMENT.format(bundles=", ".join(repository.bundles), workers=workers, failed=failed,
                                      scheme="https" if self.config.ssl_certfile else "http",
                                      address=f"[{host}]" if ":" in host else host, port=port), flush=True)
