"""serve: a bundle's server side, or a repository of bundles, over Open Inference Protocol v2 (KServe / Triton)."""

from __future__ import annotations

import argparse

from ..runtime.errors import NeurosurgeonError

__all__ = ["register"]


def register(verbs) -> None:
    p = verbs.add_parser("serve", help="serve bundles' server sides over the Open Inference Protocol v2")
    p.add_argument("bundle", metavar="PATH", help="a bundle folder, or a folder of bundles (a model repository); "
                                                   "their server sides built for this machine")
    p.add_argument("--workers", type=int, default=1,
                   help="worker threads per bundle, each with its own loaded segments; --threads are shared out "
                        "among them (default 1)")
    p.add_argument("--threads", type=int, help="threads in all, shared out among the bundles' workers (default: "
                                               "NEUROSURGEON_THREADS, else every core)")
    p.add_argument("--max-queue-delay-ms", type=float, default=0.0,
                   help="dynamic batching, for bundles built with compile --server-batch: how long a free worker "
                        "waits for requests to the same segments to join the oldest one (default 0: requests "
                        "that are already queued run together, none is delayed)")
    p.add_argument("--batch-sizes", metavar="B,B,...", help="of the batch sizes a bundle is built for, use these "
                                                             "(default: all)")
    p.add_argument("--no-batching", action="store_true", help="run every request alone")
    p.add_argument("--engine", choices=["uvicorn", "ray"], default="uvicorn",
                   help="uvicorn: one process (default); ray: Ray Serve replicas, on a local Ray head or a cluster")
    p.add_argument("--replicas", default="1", help="--engine ray: replicas, a number or auto (autoscaled between 1 "
                                                   "and the cores' worth; default 1)")
    p.add_argument("--ray-address", help="--engine ray: an existing Ray cluster (auto, or HOST:6379); default: start "
                                         "a local head")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--token-file", help="require `Authorization: Bearer <first line of this file>`")
    p.add_argument("--ssl-certfile", metavar="PEM", help="serve HTTPS with this certificate (chain)")
    p.add_argument("--ssl-keyfile", metavar="PEM", help="the certificate's private key")
    p.add_argument("--trust-key", metavar="PUB.pem",
                   help="serve the bundle only if its manifest is signed with this Ed25519 key (compile --sign-key)")
    p.add_argument("--max-body-mb", type=float, default=256, help="largest request body (default 256 MiB)")
    p.add_argument("--max-body-bytes", type=int, help=argparse.SUPPRESS)  # for tests: a limit below 1 MiB
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    p.set_defaults(run=serve)


def serve(args: argparse.Namespace) -> int:
    from ..runtime.repository import ServeOptions
    from ..serving import (
        serve,  # not the API module: a server process loads no compiler
    )

    limit = args.max_body_bytes if args.max_body_bytes is not None else int(args.max_body_mb * (1 << 20))
    if args.workers < 1:
        raise NeurosurgeonError(f"--workers must be at least 1, got {args.workers}")
    if args.threads is not None and args.threads < 1:
        raise NeurosurgeonError(f"--threads must be at least 1, got {args.threads}")
    if args.max_queue_delay_ms < 0:
        raise NeurosurgeonError(f"--max-queue-delay-ms must not be negative, got {args.max_queue_delay_ms}")
    try:
        sizes = tuple(int(b) for b in args.batch_sizes.split(",")) if args.batch_sizes else None
    except ValueError:
        raise NeurosurgeonError(f"--batch-sizes: expected sizes like 2,4,8, got {args.batch_sizes!r}") from None
    options = ServeOptions(workers=args.workers, threads=args.threads, batching=not args.no_batching, batch_sizes=sizes,
                           max_queue_delay_s=args.max_queue_delay_ms / 1e3)
    if args.replicas != "auto" and not args.replicas.isdigit():
        raise NeurosurgeonError(f"--replicas must be a number or auto, got {args.replicas!r}")
    ray = {"replicas": args.replicas, "address": args.ray_address} if args.engine == "ray" else {}
    serve(args.bundle, args.host, args.port, args.token_file, limit, args.log_level, args.ssl_certfile,
          args.ssl_keyfile, args.trust_key, options, args.engine, **ray)
    return 0
