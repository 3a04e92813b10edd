"""`neurosurgeon serve`: a bundle's server side over Open Inference Protocol v2, under uvicorn.

    python -m neurosurgeon.serve BUNDLE [--host 127.0.0.1] [--port 8000] [--token-file FILE]
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import uvicorn

from neurosurgeon.runtime.errors import NeurosurgeonError
from neurosurgeon.runtime.server import InferenceServer

__all__ = ["serve", "read_token", "add_arguments", "serve_from_args", "main"]


def read_token(token_file: str | Path) -> str:
    """The bearer token: the file's first line, stripped."""
    try:
        lines = Path(token_file).read_text().splitlines()
    except OSError as err:
        raise NeurosurgeonError(f"token file {token_file}: {err.strerror}") from None
    token = lines[0].strip() if lines else ""
    if not token:
        raise NeurosurgeonError(f"token file {token_file}: the first line is empty")
    return token


def serve(bundle_path: str | Path, host: str = "127.0.0.1", port: int = 8000, token_file: str | Path | None = None,
          max_body_mb: float = 256, log_level: str = "warning", max_body_bytes: int | None = None) -> None:
    """Serve the bundle until interrupted. Port 0 picks a free port; the line printed when the
    server is ready names the real one. `max_body_bytes`, when given, overrides `max_body_mb`."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    token = read_token(token_file) if token_file is not None else None
    limit = max_body_bytes if max_body_bytes is not None else int(max_body_mb * (1 << 20))
    app = InferenceServer(bundle_path, token=token, max_body_bytes=limit)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on", access_log=False)
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
            address = f"[{host}]" if ":" in host else host
            print(f"serving {self.app.bundle.name} ({len(self.app.models) - 1} cut models) on http://{address}:{port}",
                  flush=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The serve options, shared by `python -m neurosurgeon.serve` and `neurosurgeon serve`."""
    parser.add_argument("bundle", help="bundle folder (its server side built for this machine)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    parser.add_argument("--token-file", help="require `Authorization: Bearer <first line of this file>`")
    parser.add_argument("--max-body-mb", type=float, default=256, help="largest request body (default 256 MiB)")
    parser.add_argument("--max-body-bytes", type=int, help=argparse.SUPPRESS)  # for tests: a limit below 1 MiB
    parser.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])


def serve_from_args(args: argparse.Namespace) -> None:
    serve(args.bundle, args.host, args.port, args.token_file, args.max_body_mb, args.log_level, args.max_body_bytes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="neurosurgeon serve", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        serve_from_args(args)
    except NeurosurgeonError as err:
        print(f"neurosurgeon: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
