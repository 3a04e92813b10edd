"""Hosting the server half: the ASGI app (runtime/server.py) under uvicorn or Ray Serve, a server in a
process of its own for demos, benchmarks and tests, and the load generator that drives one.

    serve("alexnet.bundle", port=8000)                  # blocks; what `neurosurgeon serve` runs
    with start_server("alexnet.bundle") as server:      # its own process, port 0, the real port read back
        with LoadGenerator(server.url, "alexnet", feeds, ["prob"], clients=4):
            ...
"""

from .config import ServerConfig
from .engines import ENGINES, serve
from .load import LoadGenerator, LoadProcess, LoadSample
from .process import ServerProcess, ServerStartError, start_server

__all__ = ["ENGINES", "LoadGenerator", "LoadProcess", "LoadSample", "ServerConfig", "ServerProcess", "ServerStartError", "serve",
           "start_server"]
