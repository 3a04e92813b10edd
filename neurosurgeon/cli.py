"""`neurosurgeon` command line: parses arguments, calls the Python API, prints. Nothing else lives here."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from neurosurgeon.runtime.errors import NeurosurgeonError


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="ONNX model file")
    p.add_argument("--input-shape", action="append", metavar="NAME=D1,D2,...",
                   help="freeze an input's shape (repeat for several inputs), e.g. input=1,3,224,224")


def _add_emulate_options(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--cpu", choices=("cortex-a53", "cortex-a72", "cortex-a76"),
                   help="CPU model qemu emulates (default: the one the bundle's mobile preset names)")
    return p


def _parser() -> argparse.ArgumentParser:
    from neurosurgeon import __version__
    from neurosurgeon.targets import preset_names

    parser = argparse.ArgumentParser(prog="neurosurgeon", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"neurosurgeon {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = verbs.add_parser("inspect", help="print the layer table and candidate cuts of a model")
    _add_model_args(p)
    p.add_argument("--plot", metavar="PNG", help="draw per-layer output size and FLOPs to this file")

    p = verbs.add_parser("compile", help="compile a model into a partitioned bundle")
    _add_model_args(p)
    p.add_argument("--mobile", required=True, metavar="PRESET", help=f"device preset: {', '.join(preset_names('mobile'))}")
    p.add_argument("--server", required=True, metavar="PRESET", help=f"server preset: {', '.join(preset_names('server'))}")
    p.add_argument("-o", "--output", required=True, metavar="PATH", help="bundle folder (or .tar file with --tar)")
    p.add_argument("--tar", action="store_true", help="write the bundle as a single tar file")
    p.add_argument("--force", action="store_true", help="replace an existing bundle")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--mobile-cost", metavar="JSON", help="cost model fitted on the device (neurosurgeon fit)")
    p.add_argument("--server-cost", metavar="JSON", help="cost model fitted on the server")
    p.add_argument("--mobile-power", metavar="JSON", help="power profile, watts per layer type (defaults ship)")
    p.add_argument("--no-measure", action="store_true", help="do not time segments whose target runs here")
    p.add_argument("--tuning", metavar="DIR", help="apply a tuning folder made by `neurosurgeon tune`")
    p.add_argument("--kernels", choices=("blas", "tvm", "naive"), default="blas",
                   help="CPU builds: blas (default) hands convolutions (as im2col + GEMM) and fully connected "
                        "layers to the BLAS numpy ships, which the device runtime calls; tvm generates every "
                        "kernel with neurosurgeon's schedules; naive is TVM's default pipeline")

    p = verbs.add_parser("serve", help="serve a bundle's server side over the Open Inference Protocol v2")
    from neurosurgeon.serve import add_arguments

    add_arguments(p)

    p = verbs.add_parser("verify", help="run every cut of a bundle here and compare with onnxruntime on the model")
    p.add_argument("bundle", help="bundle folder (both sides built for this machine, e.g. x86-host)")
    p.add_argument("model", help="the ONNX model the bundle was compiled from")
    p.add_argument("--rtol", type=float, default=1e-4)
    p.add_argument("--atol", type=float, default=1e-5)

    p = verbs.add_parser("demo", help="compile a zoo network, then run every cut against onnxruntime")
    p.add_argument("--model", default="alexnet", help="zoo network (default alexnet)")
    p.add_argument("--input-size", type=int, default=112,
                   help="input size (default 112: untuned TVM code is slow, see README; 0 = the model's own)")
    p.add_argument("--workdir", default=".cache/demo", help="where the model and bundle are kept between runs")
    p.add_argument("--device-share", type=float, default=0.25, help="CPU share of the emulated device (default 0.25)")
    p.add_argument("--requests", type=int, default=3, help="auto requests per scenario")

    p = verbs.add_parser("emulate", help="run an aarch64 bundle's run.py under qemu on an emulated device",
                         usage="neurosurgeon emulate BUNDLE [--cpu CPU] -- [run.py args ...]")
    p.add_argument("bundle", help="bundle folder whose mobile side is aarch64-neon")
    _add_emulate_options(p)
    p.add_argument("runtime_args", nargs=argparse.REMAINDER, metavar="-- run.py args",
                   help="passed to the bundle's run.py, e.g. -- --server http://127.0.0.1:8000 --cut all")

    p = verbs.add_parser("emulate-rpc", help="run the runtime's RPC server on the emulated aarch64 device "
                                             "(a device for tune --rpc)")
    p.add_argument("--port", type=int, default=9090)
    p.add_argument("--cpu", choices=("cortex-a53", "cortex-a72", "cortex-a76"), default="cortex-a72")

    p = verbs.add_parser("tune", help="tune a model's segment workloads into a database compile --tuning applies")
    from neurosurgeon.compiler import tune_cli

    tune_cli.add_arguments(p)

    p = verbs.add_parser("profile", help="profile layer types on a target, or time a bundle's own segments")
    from neurosurgeon.cost_models import profile_cli

    profile_cli.add_arguments(p)

    p = verbs.add_parser("fit", help="fit per-layer-type cost regressions to a profile")
    from neurosurgeon.cost_models import fit_cli

    fit_cli.add_arguments(p)

    p = verbs.add_parser("bench", help="benchmarks that print tables (speed, runtime, decisions)")
    benches = p.add_subparsers(dest="bench", required=True, metavar="BENCH")
    b = benches.add_parser("speed", help="our generated code vs onnxruntime on this CPU, medians and ratios")
    b.add_argument("model", help="ONNX model file, or the name of a zoo model (neurosurgeon zoo --list)")
    b.add_argument("--target", default="x86-host", metavar="PRESET", help="a preset that runs here (default x86-host)")
    b.add_argument("--tuning", metavar="DIR", help="also time a build with this tuning folder (neurosurgeon tune)")
    b.add_argument("--threads", type=int, help="threads for TVM, BLAS and onnxruntime (default: every usable core)")
    b.add_argument("--kernels", choices=("blas", "tvm", "naive"), default="blas", help="the untuned build's kernels")
    b.add_argument("--steps", action="store_true", help="also time TVM's default pipeline and ours without BLAS")
    b.add_argument("--cuts", action="store_true", help="also build the bundle and time every cut end to end "
                                                       "against the monolithic build")
    b.add_argument("--repeats", type=int, default=15, help="interleaved timing rounds (default 15)")
    b.add_argument("--input-shape", action="append", metavar="NAME=D1,D2,...")
    b.add_argument("--input-size", type=int, help="zoo models: input height = width")
    b.add_argument("--quiet", action="store_true")
    b.add_argument("--json", action="store_true")
    b = benches.add_parser("runtime", help="decision time, request overhead, server requests/s")
    b.add_argument("bundle", help="bundle folder built for this machine (x86-host on both sides)")
    b.add_argument("--clients", type=int, nargs="+", default=[1, 2, 4], help="concurrent clients (default 1 2 4)")
    b.add_argument("--seconds", type=float, default=5.0, help="seconds per client count (default 5)")
    b.add_argument("--repeats", type=int, default=20, help="requests per cut for the overhead (default 20)")
    b.add_argument("--json", action="store_true")
    b = benches.add_parser("decisions", help="cost-model error and decision quality vs an oracle")
    b.add_argument("--cost-model", required=True, help="a cost model fitted here (neurosurgeon fit)")
    b.add_argument("--models", nargs="+", default=["alexnet", "vgg16", "deepface", "lenet", "asr", "pos", "ner", "chk",
                                                   "resnet18", "inception"])
    b.add_argument("--input-size", type=int, help="cap image models' input size (faster)")
    b.add_argument("--workdir", default=".cache/bench-decisions")
    b.add_argument("--json", action="store_true")

    p = verbs.add_parser("zoo", help="write one of the papers' benchmark networks as ONNX")
    p.add_argument("name", nargs="?", help="model name (omit with --list)")
    p.add_argument("-o", "--output", metavar="ONNX", help="output file (default NAME.onnx)")
    p.add_argument("--input-size", type=int, help="spatial input size for image models (smaller = faster)")
    p.add_argument("--width", type=float, default=1.0, help="scale every hidden width (default 1.0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--list", action="store_true", help="list the models")
    return parser


def cmd_inspect(args) -> int:
    from neurosurgeon.compiler.frontend import parse_input_shapes
    from neurosurgeon.compiler.pipeline import analyse
    from neurosurgeon.compiler.report import cut_table, layer_table, plot_layers

    frozen, graph, plan = analyse(args.model, parse_input_shapes(args.input_shape))
    print(layer_table(frozen, graph))
    print()
    print(cut_table(plan))
    if args.plot:
        print(f"\nplot written to {plot_layers(frozen, graph, args.plot)}")
    return 0


def cmd_compile(args) -> int:
    from neurosurgeon.compiler.frontend import parse_input_shapes
    from neurosurgeon.compiler.pipeline import CompileOptions, compile_model
    from neurosurgeon.compiler.report import human_bytes

    options = CompileOptions(mobile=args.mobile, server=args.server, input_shapes=parse_input_shapes(args.input_shape),
                             as_tar=args.tar, force=args.force, progress=not args.quiet, measure=not args.no_measure,
                             mobile_cost=args.mobile_cost, server_cost=args.server_cost, mobile_power=args.mobile_power,
                             tuning=args.tuning, kernels=args.kernels)
    result = compile_model(args.model, Path(args.output), options)
    m = result.manifest
    total = sum(e["bytes"] for files in m["artifacts"].values() for e in files)
    print(f"bundle {result.path}: {m['model']['name']}, {len(m['layers'])} layers, {len(m['cuts'])} cuts, "
          f"{len(m['segments'])} segments; mobile {args.mobile}, server {args.server}; "
          f"{human_bytes(total)} of artifacts; built in "
          + ", ".join(f"{k} {v:.1f} s" for k, v in result.build_seconds.items()))
    return 0


def cmd_verify(args) -> int:
    from neurosurgeon.compiler.report import check_table
    from neurosurgeon.compiler.verify import verify_bundle

    checks = verify_bundle(args.bundle, args.model, rtol=args.rtol, atol=args.atol)
    print(check_table(checks))
    return 0 if all(c.ok for c in checks) else 1


def cmd_demo(args) -> int:
    from neurosurgeon.compiler.demo import run_demo

    return run_demo(Path(args.workdir), args.model, args.input_size or None, args.device_share, args.requests)


def cmd_serve(args) -> int:
    from neurosurgeon.serve import serve_from_args

    serve_from_args(args)
    return 0


def cmd_emulate(args) -> int:
    from neurosurgeon.compiler.emulate import run_bundle

    runtime_args = args.runtime_args
    if "--" in runtime_args:  # REMAINDER also took the options between BUNDLE and `--`: they are ours
        split = runtime_args.index("--")
        own, runtime_args = runtime_args[:split], runtime_args[split + 1:]
        _add_emulate_options(argparse.ArgumentParser(prog="neurosurgeon emulate BUNDLE")).parse_args(own, namespace=args)
    # The device is built on first use (progress on stderr); run.py's output is not captured but
    # streams straight to this terminal.
    return run_bundle(args.bundle, runtime_args, cpu=args.cpu, capture_output=False).returncode


def cmd_emulate_rpc(args) -> int:
    from neurosurgeon.compiler.emulate import start_rpc_server

    with start_rpc_server(args.port, args.cpu) as server:
        print(f"RPC server on the emulated aarch64 device ({args.cpu}) at {server.address}; tune with "
              f"`neurosurgeon tune MODEL --target aarch64-neon --rpc {server.address} ...`; Ctrl-C stops it", flush=True)
        try:
            server.process.wait()
        except KeyboardInterrupt:
            pass
    return 0


def cmd_tune(args) -> int:
    from neurosurgeon.compiler import tune_cli

    return tune_cli.run(args)


def cmd_profile(args) -> int:
    from neurosurgeon.cost_models import profile_cli

    return profile_cli.run(args)


def cmd_fit(args) -> int:
    from neurosurgeon.cost_models import fit_cli

    return fit_cli.run(args)


def cmd_bench(args) -> int:
    if args.bench == "speed":
        return cmd_bench_speed(args)
    from neurosurgeon import bench

    if args.bench == "runtime":
        return bench.bench_runtime(args.bundle, args.clients, args.seconds, args.repeats, args.json)
    return bench.bench_decisions(args.models, args.cost_model, args.input_size, Path(args.workdir), args.json)


def cmd_bench_speed(args) -> int:
    from neurosurgeon.compiler.speed import SpeedOptions, apply_threads

    apply_threads(args.threads)  # before anything imports numpy (OpenBLAS reads its thread count once)
    import json

    from neurosurgeon.compiler import zoo
    from neurosurgeon.compiler.frontend import parse_input_shapes
    from neurosurgeon.compiler.speed import bench_speed, speed_table

    model, name = args.model, None
    if not Path(args.model).exists() and args.model in zoo.MODELS:
        model, name = zoo.build(args.model, input_size=args.input_size), args.model
    elif args.input_size is not None:
        raise NeurosurgeonError("--input-size applies to zoo models; use --input-shape NAME=DIMS for a file")
    options = SpeedOptions(target=args.target, tuning=args.tuning, threads=args.threads, steps=args.steps,
                           cuts=args.cuts, repeats=args.repeats, input_shapes=parse_input_shapes(args.input_shape),
                           kernels=args.kernels, progress=not args.quiet)
    result = bench_speed(model, options, name=name)
    print(json.dumps(result, indent=1) if args.json else speed_table(result))
    return 0


def cmd_zoo(args) -> int:
    from neurosurgeon.compiler import zoo

    if args.list or not args.name:
        for name, description in zoo.MODELS.items():
            print(f"{name:10s} {description}")
        return 0
    try:
        model = zoo.build(args.name, input_size=args.input_size, width=args.width, seed=args.seed)
    except (KeyError, ValueError) as err:
        raise NeurosurgeonError(str(err.args[0] if err.args else err)) from None
    out = Path(args.output or f"{args.name}.onnx")
    zoo.save(model, out)
    print(f"{out}: {args.name}, {len(model.graph.node)} nodes, "
          f"input {[d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handler = {"inspect": cmd_inspect, "compile": cmd_compile, "verify": cmd_verify, "demo": cmd_demo, "serve": cmd_serve, "bench": cmd_bench, "fit": cmd_fit, "profile": cmd_profile, "tune": cmd_tune,
               "zoo": cmd_zoo, "emulate": cmd_emulate, "emulate-rpc": cmd_emulate_rpc}[args.verb]
    try:
        return handler(args)
    except NeurosurgeonError as err:
        print(f"neurosurgeon: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("neurosurgeon: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
