"""inspect, compile, verify: what the compiler makes of a model, the bundle, and its check against
onnxruntime."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_model, add_partitioner, input_shapes, preset_help

__all__ = ["register"]


def register(verbs) -> None:
    from ..compiler.kernels import DEFAULT_KERNELS, KERNEL_CHOICES

    p = verbs.add_parser("inspect", help="print the layer table and candidate cuts of a model")
    add_model(p)
    p.add_argument("--plot", metavar="PNG", help="draw per-layer output size and FLOPs to this file")
    add_partitioner(p)
    p.set_defaults(run=inspect)

    p = verbs.add_parser("compile", help="compile a model into a partitioned bundle")
    add_model(p)
    p.add_argument("--mobile", required=True, metavar="PRESET", help=f"mobile-side preset: {preset_help('mobile')}")
    p.add_argument("--server", required=True, metavar="PRESET", help=f"server preset: {preset_help('server')}")
    p.add_argument("-o", "--output", required=True, metavar="PATH", help="bundle folder (or .tar file with --tar)")
    p.add_argument("--tar", action="store_true", help="write the bundle as a single tar file")
    p.add_argument("--force", action="store_true", help="replace an existing bundle")
    p.add_argument("--quiet", action="store_true", help="no progress")
    p.add_argument("--mobile-cost", metavar="JSON", help="cost model fitted on the mobile side (neurosurgeon fit)")
    p.add_argument("--server-cost", metavar="JSON", help="cost model fitted on the server")
    p.add_argument("--mobile-power", metavar="JSON", help="power table, watts per layer type (defaults ship)")
    p.add_argument("--no-measure", action="store_true", help="do not time segments whose target runs here")
    p.add_argument("--tuning", metavar="DIR", help="apply a tuning folder made by `neurosurgeon tune`")
    p.add_argument("--planner", default="prefix", help="the bundle's default planner: prefix, shortest-path, min-cut")
    p.add_argument("--server-batch", metavar="B,B,...", type=_sizes, default=(),
                   help="also build the server side for these batch sizes (e.g. 2,4,8): a server then runs requests "
                        "that wait for the same segments together (serve --max-queue-delay-ms)")
    p.add_argument("--jobs", metavar="N", type=int, default=None,
                   help="build this many segments at a time, each in a process of its own (default: every core)")
    p.add_argument("--sign-key", metavar="KEY.pem",
                   help="sign the manifest with this Ed25519 private key (neurosurgeon keygen, or openssl genpkey "
                        "-algorithm ed25519); devices and servers with --trust-key refuse unsigned or changed bundles")
    p.add_argument("--kernels", choices=KERNEL_CHOICES, default=DEFAULT_KERNELS,
                   help="CPU builds: tvm (default) generates every kernel, convolutions and fully connected layers "
                        "as register-tiled kernels on TVM's thread pool, 3x3 convolutions as Winograd's (their "
                        "weights 16/9 the size); tvm-direct the same with direct 3x3 convolutions (weights as the "
                        "model's, slower); blas hands the products (as im2col + GEMM) to the BLAS numpy ships, "
                        "which the runtime calls; naive is TVM's default pipeline")
    add_partitioner(p)
    p.set_defaults(run=compile_bundle)

    p = verbs.add_parser("keygen", help="make an Ed25519 key pair to sign bundles with (KEY.pem and KEY.pub.pem)")
    p.add_argument("-o", "--output", required=True, metavar="KEY.pem", help="the private key to write (mode 600)")
    p.add_argument("--force", action="store_true", help="replace existing key files")
    p.set_defaults(run=keygen)

    p = verbs.add_parser("verify", help="run every cut of a bundle here and compare with onnxruntime on the model")
    p.add_argument("bundle", help="bundle folder (both sides built for this machine, e.g. x86-host)")
    p.add_argument("model", help="the ONNX model the bundle was compiled from")
    p.add_argument("--rtol", type=float, default=1e-4)
    p.add_argument("--atol", type=float, default=1e-5)
    p.set_defaults(run=verify)


def inspect(args) -> int:
    from ..api import analyse
    from ..compiler.report import cut_table, layer_table, plot_layers

    frozen, graph, plan = analyse(args.model, input_shapes(args), args.partitioner)
    print(layer_table(frozen, graph))
    print()
    print(cut_table(plan))
    if args.plot:
        print(f"\nplot written to {plot_layers(frozen, graph, args.plot)}")
    return 0


def compile_bundle(args) -> int:
    from .. import api
    from ..compiler.report import human_bytes

    options = api.CompileOptions(mobile=args.mobile, server=args.server, input_shapes=input_shapes(args),
                                 as_tar=args.tar, force=args.force, progress=not args.quiet, tuning=args.tuning,
                                 kernels=args.kernels, planner=args.planner, sign_key=args.sign_key,
                                 server_batch=args.server_batch, partitioner=args.partitioner,
                                 jobs=args.jobs)
    costs = api.CostAnnotation(mobile_model=args.mobile_cost, server_model=args.server_cost,
                               mobile_power=args.mobile_power, measure=not args.no_measure)
    result = api.compile(args.model, Path(args.output), options, costs)
    m = result.manifest
    total = sum(e["bytes"] for files in m["artifacts"].values() for e in files)
    print(f"bundle {result.path}: {m['model']['name']}, {len(m['layers'])} layers, {len(m['cuts'])} cuts "
          f"({m['identity']['options']['partitioner']}), {len(m['segments'])} segments; mobile {args.mobile}, server {args.server}; "
          f"{human_bytes(total)} of artifacts; built in "
          + ", ".join(f"{k} {v:.1f} s" for k, v in result.build_seconds.items())
          + (f" of builds, {m['build']['workers']} at a time" if m["build"].get("workers", 1) > 1 else ""))
    return 0


def keygen(args) -> int:
    from .. import api

    private, public = api.keygen(args.output, force=args.force)
    print(f"private key {private} (keep it secret: compile --sign-key {private}); public key {public} "
          f"(give it to devices and servers: --trust-key {public})")
    return 0


def verify(args) -> int:
    from ..tools.verify import check_table, verify_bundle

    checks = verify_bundle(args.bundle, args.model, rtol=args.rtol, atol=args.atol)
    print(check_table(checks))
    return 0 if all(c.ok for c in checks) else 1


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected batch sizes like 2,4,8, got {text!r}") from None
    if any(b < 2 for b in sizes):
        raise argparse.ArgumentTypeError(f"batch sizes must be at least 2 (batch 1 is always built), got {text!r}")
    return sizes
