"""The uvicorn engine: the ASGI app in this process, its workers as threads."""

from __future__ import annotations

import uvicorn

from ..runtime.server import InferenceServer
from .config import ServerConfig

__all__ = ["run_uvicorn"]


def run_uvicorn(config: ServerConfig) -> None:
    app = config.app()
    settings = uvicorn.Config(app, host=config.host, port=config.port, log_level=config.log_level, lifespan="on",
                              access_log=False, ssl_certfile=config.ssl_certfile, ssl_keyfile=config.ssl_keyfile)
    _AnnouncingServer(settings, app, config).run()


class _AnnouncingServer(uvicorn.Server):
    """Prints one line once the socket listens, naming the real port (also when port 0 was asked for)."""

    def __init__(self, settings: uvicorn.Config, app: InferenceServer, config: ServerConfig):
        super().__init__(settings)
        self.app, self.neurosurgeon = app, config

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        if self.started:
            repository = self.app.repository
            workers = next(iter(repository.bundles.values())).pool.workers
            self.neurosurgeon.announce(self.servers[0].sockets[0].getsockname()[1], list(repository.bundles),
                                       f"{workers} workers each", list(repository.failed))
