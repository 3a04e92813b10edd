"""A TVM RPC server for tuning on a board: `neurosurgeon tune --target PRESET --rpc HOST:PORT` sends
candidate kernels here, compiled on the build machine, and this process loads and times them.

Runs with the runtime alone (numpy, TVM's runtime library; never the compiler): on the board,

    python -m neurosurgeon_runtime rpc-server --port 9090          # from an unpacked bundle
    python -m neurosurgeon.runtime rpc-server --port 9090          # where neurosurgeon is installed

It serves one tuning client at a time and keeps running between them. Anyone who can reach the port
can run code on the board: bind it to a private network (the default host is 0.0.0.0 so that a
build machine can reach it; pass --host 127.0.0.1 to keep it local).
"""

from __future__ import annotations

import os
import socket

__all__ = ["serve_rpc"]


def serve_rpc(host: str = "0.0.0.0", port: int = 9090, threads: int | None = None) -> None:
    """Listen on host:port until interrupted, timing kernels with `threads` threads (default: every
    usable core)."""
    os.environ.setdefault("TVM_USE_RUNTIME_LIB", "1")
    threads = threads or len(os.sched_getaffinity(0))
    os.environ["TVM_NUM_THREADS"] = str(threads)  # inherited by the server's worker process
    import tvm
    from tvm.rpc import server as tvm_rpc_server

    # TVM's rpc.Server starts its loop in a worker through cloudpickle, which a board need not have;
    # its listen loop (handshake, then one forked process per session) is all this needs.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1)
    print(f"neurosurgeon rpc server: listening on {host}:{port}, {threads} threads, "
          f"TVM {tvm.__version__} runtime only", flush=True)
    try:
        tvm_rpc_server._listen_loop(sock, port, "", None, None, None)
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
