"""`neurosurgeon serve`: one configuration (what to serve, where, with which key, token and options),
checked once, and the engines that host the ASGI app (runtime/server.py) with it: uvicorn in this
process, or Ray Serve replicas (serving/ray_engine.py)."""

from __future__ import annotations

import logging
from pathlib import Path

from ..runtime.auth import read_token
from ..runtime.errors import NeurosurgeonError
from ..runtime.repository import ServeOptions
from ..runtime.signing import read_public_key
from .config import ServerConfig

__all__ = ["ENGINES", "serve"]

def serve(path: str | Path, host: str = "127.0.0.1", port: int = 8000, token_file: str | Path | None = None,
          max_body_bytes: int = 256 << 20, log_level: str = "warning", ssl_certfile: str | Path | None = None,
          ssl_keyfile: str | Path | None = None, trust_key: str | Path | None = None,
          options: ServeOptions | None = None, engine: str = "uvicorn", **engine_options) -> None:
    """Serve a bundle, or every bundle in a folder, until interrupted: over HTTPS with a certificate
    and its key; workers and batching as `options` say; on `engine` (ENGINES; Ray takes `replicas`
    and `address`). Port 0 picks a free port; the line printed when the server is ready names the
    real one. With `trust_key` (an Ed25519 public key PEM) a bundle is served only if its manifest is
    signed with that key."""
    if engine not in ENGINES:
        raise NeurosurgeonError(f"unknown engine {engine!r}; engines: {', '.join(ENGINES)}")
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if (ssl_certfile is None) != (ssl_keyfile is None):
        raise NeurosurgeonError("HTTPS needs both --ssl-certfile and --ssl-keyfile")
    for pem in (ssl_certfile, ssl_keyfile):
        if pem is not None and not Path(pem).is_file():
            raise NeurosurgeonError(f"{pem}: no such file (a PEM certificate or key for HTTPS)")
    config = ServerConfig(Path(path), host, port, read_token(token_file) if token_file is not None else None,
                          max_body_bytes, read_public_key(trust_key) if trust_key is not None else None,
                          str(ssl_certfile) if ssl_certfile else None, str(ssl_keyfile) if ssl_keyfile else None,
                          options or ServeOptions(), log_level)
    ENGINES[engine](config, **engine_options)


def _uvicorn(config: ServerConfig) -> None:
    from .uvicorn_engine import run_uvicorn

    run_uvicorn(config)


def _ray(config: ServerConfig, replicas: int | str = 1, address: str | None = None) -> None:
    from .ray_engine import (
        run_ray,  # Ray is an optional extra: imported only when asked for
    )

    run_ray(config, replicas, address)


ENGINES = {"uvicorn": _uvicorn, "ray": _ray}
