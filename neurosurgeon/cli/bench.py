"""bench speed|runtime|decisions|compile|suite|soak|load|compression: benchmarks that print tables (or JSON), measured here,
medians side by side in one run since the machine is shared and noisy (neurosurgeon.tools.bench)."""

from __future__ import annotations

import json
from pathlib import Path

from .common import add_model, input_shapes

__all__ = ["register"]

ZOO_MODELS = ["alexnet", "vgg16", "deepface", "lenet", "asr", "pos", "ner", "chk", "resnet18", "inception"]


def register(verbs) -> None:
    from ..compiler.kernels import DEFAULT_KERNELS, KERNEL_CHOICES

    p = verbs.add_parser("bench", help="benchmarks that print tables (speed, runtime, decisions, compile, suite, soak, load, "
                                         "compression, memory)")
    benches = p.add_subparsers(dest="bench", required=True, metavar="BENCH")

    b = benches.add_parser("speed", help="our generated code vs onnxruntime on this CPU, medians and ratios")
    add_model(b, zoo=True)
    b.add_argument("--target", default="x86-host", metavar="PRESET", help="a preset that runs here (default x86-host)")
    b.add_argument("--tuning", metavar="DIR", help="also time a build with this tuning folder (neurosurgeon tune)")
    b.add_argument("--threads", type=int, help="threads for TVM, BLAS and onnxruntime (default: every usable core)")
    b.add_argument("--kernels", choices=KERNEL_CHOICES, default=DEFAULT_KERNELS, help="the untuned build's kernels")
    b.add_argument("--steps", action="store_true", help="also time the other kernel choices (TVM's default pipeline, im2col + BLAS or tiled products)")
    b.add_argument("--cuts", action="store_true", help="also build the bundle and time every cut end to end "
                                                       "against the monolithic build")
    b.add_argument("--partitioner", metavar="NAME", help="--cuts: the bundle's candidate cuts (upload-envelope, the "
                                                         "default; fused-layers; layer-boundaries)")
    b.add_argument("--repeats", type=int, default=15, help="interleaved timing rounds (default 15)")
    b.add_argument("--quiet", action="store_true")
    b.add_argument("--json", action="store_true")
    b.set_defaults(run=speed)

    b = benches.add_parser("runtime", help="decision time, request overhead, server requests/s")
    b.add_argument("bundle", help="bundle folder built for this machine (x86-host on both sides)")
    b.add_argument("--clients", type=int, nargs="+", default=[1, 2, 4], help="concurrent clients (default 1 2 4)")
    b.add_argument("--seconds", type=float, default=5.0, help="seconds per client count (default 5)")
    b.add_argument("--repeats", type=int, default=20, help="requests per cut for the overhead (default 20)")
    b.add_argument("--json", action="store_true")
    b.set_defaults(run=runtime)

    b = benches.add_parser("decisions", help="schedules (single cut vs several transfers vs DAG placement) over the "
                                             "zoo, decision times; with --cost-model, cost-model error and decision "
                                             "quality vs an oracle")
    b.add_argument("--cost-model", help="a cost model fitted here (neurosurgeon fit): also its error and decisions")
    b.add_argument("--models", nargs="+", help="zoo models (default: all)")
    b.add_argument("--input-size", type=int, help="with --cost-model: cap image models' input size (faster)")
    b.add_argument("--workdir", default=".cache/bench-decisions")
    b.add_argument("--quiet", action="store_true")
    b.add_argument("--json", action="store_true")
    b.set_defaults(run=decisions)

    b = benches.add_parser("compile", help="compile time and size of every segment vs one monolithic build")
    b.add_argument("--models", nargs="+", default=["alexnet", "resnet18", "vgg16"])
    b.add_argument("--targets", nargs="+", default=["x86-host", "aarch64-neon", "cuda-sm80"])
    b.add_argument("--input-size", type=int, help="override the models' input size")
    b.add_argument("--partitioners", nargs="+", metavar="NAME", help="the segments' partitioners, one row each "
                                                                    "(default: the default partitioner)")
    b.add_argument("--json", action="store_true")
    b.set_defaults(run=compile_cost)

    b = benches.add_parser("suite", help="tune, then bench speed, for several models and thread counts; a table "
                                         "and a plot")
    b.add_argument("--models", nargs="+", help="zoo models (default: every one, at its own input size; about half "
                                               "an hour on a 2-core VM from a fresh --workdir, 10 minutes of it "
                                               "tuning)")
    b.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    b.add_argument("--budget", type=float, default=300, help="tuning seconds per model (default 300)")
    b.add_argument("--steps", action="store_true", help="also time the other kernel choices (TVM's default pipeline, im2col + BLAS or tiled products)")
    b.add_argument("--cuts", action="store_true", help="also time every cut of the tuned bundle")
    b.add_argument("--repeats", type=int, default=15)
    b.add_argument("--workdir", default=".cache/speed-bench", help="keeps models and the tuning folder")
    b.add_argument("--plot", help="write a bar chart of the ratios here (PNG)")
    b.add_argument("--quiet", action="store_true")
    b.add_argument("--json", action="store_true")
    b.set_defaults(run=suite)

    b = benches.add_parser("soak", help="many devices and abusive clients against a real server on loopback, "
                                        "a restart mid-run: nothing wrong, nothing lost, no leaks")
    b.add_argument("--seconds", type=float, default=120.0, help="how long (default 120)")
    b.add_argument("--devices", type=int, default=6, help="devices, each a MobileRuntime (default 6)")
    b.add_argument("--abusers", type=int, default=4, help="clients that cut uploads and answers, read slowly, send "
                                                          "garbage (default 4)")
    b.add_argument("--no-restart", action="store_true", help="keep one server for the whole run")
    b.add_argument("--model", default="lenet", help="zoo model (default lenet)")
    b.add_argument("--width", type=float, default=0.25, help="its width multiplier (default 0.25)")
    b.add_argument("--workdir", default=".cache/bench-soak")
    b.add_argument("--plot", help="write the servers' memory over time here (PNG)")
    b.add_argument("--json", action="store_true")
    b.set_defaults(run=soak)

    b = benches.add_parser("load", help="simulated devices against real servers: capacity per server configuration "
                                        "and datacenter throughput (devices choosing cuts vs cloud-only)")
    b.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4, 8], help="device counts (default 1 2 4 8)")
    b.add_argument("--seconds", type=float, default=10.0, help="counted seconds per cell (default 10)")
    b.add_argument("--configs", nargs="+", help="server configurations to compare (default: all)")
    b.add_argument("--networks", nargs="+", default=["wifi", "lte", "3g"])
    b.add_argument("--datacenter-devices", type=int, default=24, help="devices in the datacenter runs (default 24)")
    b.add_argument("--workdir", default=".cache/bench-load")
    b.add_argument("--quiet", action="store_true")
    b.add_argument("--json", action="store_true")
    b.set_defaults(run=load)

    b = benches.add_parser("compression", help="coded uploads per zoo model: bytes and coding time per cut, lossy "
                                               "codecs' error against onnxruntime, end to end over 3G and LTE")
    b.add_argument("models", nargs="*", help="zoo models (default alexnet vgg16 resnet18 mobilenetv2 asr deepface)")
    b.add_argument("--input-size", type=int, default=112, help="image models' input size (default 112; 0: their own)")
    b.add_argument("--networks", nargs="*", default=["3g", "lte"], help="end-to-end links (default 3g lte; none: skip)")
    b.add_argument("--device", default="dilate:16", metavar="SPEC", help="the device's speed, as evaluate's --device")
    b.add_argument("--requests", type=int, default=10, help="requests per median (default 10)")
    b.add_argument("--workdir", default=".cache/bench-compression")
    b.add_argument("--quiet", action="store_true")
    b.add_argument("--json", action="store_true")
    b.set_defaults(run=compression)

    b = benches.add_parser("memory", help="peak resident memory of the device runtime and the server against "
                                          "onnxruntime, per model")
    b.add_argument("models", nargs="*", default=[*ZOO_MODELS, "mobilenetv2"], help="zoo models (default: all)")
    b.add_argument("--input-size", type=int, default=224, help="image models' input size (default 224; 0: their own)")
    b.add_argument("--kernels", choices=KERNEL_CHOICES, help="the bundles' CPU kernels (default: compile's default; "
                   "tvm-direct: no Winograd, the model's weights)")
    b.add_argument("--workdir", default=".cache/bench-memory")
    b.add_argument("--quiet", action="store_true")
    b.add_argument("--json", action="store_true")
    b.set_defaults(run=memory)


def memory(args) -> int:
    from ..tools.bench.memory import bench_memory, memory_table

    return _show(bench_memory(args.models, args.input_size or None, Path(args.workdir), not args.quiet, args.kernels),
                 memory_table, args.json)


def compression(args) -> int:
    from ..tools.bench.compression import CompressionOptions, bench_compression, compression_tables

    options = CompressionOptions(input_size=args.input_size or None, networks=tuple(args.networks), device=args.device,
                                 requests=args.requests, workdir=Path(args.workdir), progress=not args.quiet)
    if args.models:
        options.models = list(args.models)
    return _show(bench_compression(options), compression_tables, args.json)


def _show(result, table, as_json: bool) -> int:
    print(json.dumps(result, indent=1) if as_json else table(result))
    return 0


def speed(args) -> int:
    from ..tools.bench.speed import SpeedOptions, bench_speed, speed_table

    options = SpeedOptions(target=args.target, tuning=args.tuning, threads=args.threads, steps=args.steps,
                           cuts=args.cuts, repeats=args.repeats, input_shapes=input_shapes(args),
                           input_size=args.input_size, kernels=args.kernels, partitioner=args.partitioner,
                           progress=not args.quiet)
    return _show(bench_speed(args.model, options), speed_table, args.json)


def runtime(args) -> int:
    from ..tools.bench.serving import bench_runtime, runtime_table

    return _show(bench_runtime(args.bundle, args.clients, args.seconds, args.repeats), runtime_table, args.json)


def decisions(args) -> int:
    from ..tools.bench.decisions import bench_decisions, decisions_table
    from ..tools.bench.schedules import MODELS, bench_schedules, schedules_table

    result = {"schedules": bench_schedules(args.models or MODELS, progress=not args.quiet)}
    if args.cost_model:
        result["cost_model"] = bench_decisions(args.models or ZOO_MODELS, args.cost_model, args.input_size,
                                               Path(args.workdir), progress=not args.quiet)
    return _show(result, lambda r: "\n\n".join([schedules_table(r["schedules"])]
                                                + ([decisions_table(r["cost_model"])] if "cost_model" in r else [])),
                 args.json)


def compile_cost(args) -> int:
    from ..tools.bench.compile import bench_compile, compile_table

    return _show(bench_compile(args.models, args.targets, args.input_size, args.partitioners or [None]),
                 compile_table, args.json)


def suite(args) -> int:
    from ..tools.bench.suite import DEFAULT_MODELS, plot, speed_suite, suite_table

    results = speed_suite(args.models or DEFAULT_MODELS, args.threads, args.budget, args.steps, args.cuts, args.repeats, args.workdir,
                          args.quiet)
    if args.plot:
        plot(results, args.plot)
    return _show(results, suite_table, args.json)


def soak(args) -> int:
    import sys
    from dataclasses import asdict

    from ..tools.bench.soak import SoakOptions, bench_soak, plot_soak, soak_table

    options = SoakOptions(seconds=args.seconds, devices=args.devices, abusers=args.abusers,
                          restart=not args.no_restart, model=args.model, width=args.width, workdir=args.workdir)
    result = bench_soak(options, log=lambda line: print(line, file=sys.stderr, flush=True))
    if args.plot:
        plot_soak(result, args.plot)
    _show(asdict(result), lambda _: soak_table(result), args.json)
    return 0 if result.wrong == result.lost == 0 else 1


def load(args) -> int:
    from dataclasses import asdict

    from ..runtime.errors import NeurosurgeonError
    from ..tools.bench.load import CONFIGS, LoadOptions, bench_load, load_table

    unknown = [c for c in args.configs or [] if c not in CONFIGS]
    if unknown:
        raise NeurosurgeonError(f"--configs: unknown {unknown}; known: {', '.join(map(repr, CONFIGS))}")
    options = LoadOptions(devices=tuple(args.devices), seconds=args.seconds, configs=tuple(args.configs or CONFIGS),
                          networks=tuple(args.networks), datacenter_devices=args.datacenter_devices,
                          workdir=args.workdir, progress=not args.quiet)
    return _show(asdict(bench_load(options)), load_table, args.json)
