"""zoo, demo, emulate, emulate-rpc: the tools (neurosurgeon.tools) a developer or evaluator uses: the
papers' networks, the README's main job, and the emulated aarch64 board."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["register"]

CPUS = ("cortex-a53", "cortex-a72", "cortex-a76")


def _add_board_options(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--cpu", choices=CPUS, help="CPU model qemu emulates (default: the one the bundle's mobile preset names)")
    return p


def register(verbs) -> None:
    p = verbs.add_parser("zoo", help="write one of the papers' benchmark networks as ONNX")
    p.add_argument("name", nargs="?", help="model name (omit with --list)")
    p.add_argument("-o", "--output", metavar="ONNX", help="output file (default NAME.onnx)")
    p.add_argument("--input-size", type=int, help="spatial input size for image models (smaller = faster)")
    p.add_argument("--width", type=float, default=1.0, help="scale every hidden width (default 1.0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--list", action="store_true", help="list the models")
    p.set_defaults(run=zoo)

    p = verbs.add_parser("demo", help="compile a zoo network, serve it, and run it split over shaped links")
    p.add_argument("--model", default="alexnet", help="zoo network (default alexnet)")
    p.add_argument("--input-size", type=int, default=112,
                   help="input size (default 112, for speed; 0 = the model's own)")
    p.add_argument("--workdir", default=".cache/demo", help="where the model and bundle are kept between runs")
    p.add_argument("--device", default="dilate:16", metavar="SPEC",
                   help="the device's speed: dilate:F (F times slower by time dilation, default dilate:16) or "
                        "quota:SHARE[:PERIOD_MS] (a cgroup CPU quota)")
    p.add_argument("--mobile-share", "--device-share", dest="mobile_share", type=float,
                   help="the old way to say --device quota:SHARE:4 (a cgroup CPU quota over a 4 ms period)")
    p.add_argument("--requests", type=int, default=10, help="requests per median (default 10)")
    p.set_defaults(run=demo)

    p = verbs.add_parser("evaluate", help="the papers' evaluation, run for real: every model x network x server load, "
                                          "the planner's choice against cloud-only, device-only and every cut; "
                                          "a report with plots")
    p.add_argument("models", nargs="*", metavar="MODEL", help="zoo networks (default: all of them)")
    p.add_argument("-o", "--output", default="report", help="the report folder (default report/); a run resumes "
                                                            "from the cases already in it")
    p.add_argument("--networks", nargs="+", default=None, metavar="NET", help="wifi lte 3g (default: all)")
    p.add_argument("--objective", dest="objectives", nargs="+", default=None, metavar="OBJ",
                   help="latency energy (default: both)")
    p.add_argument("--device", default="dilate:16", metavar="SPEC",
                   help="the device's speed: dilate:F (F times slower by time dilation, default dilate:16) or "
                        "quota:SHARE[:PERIOD_MS] (a cgroup CPU quota)")
    p.add_argument("--loads", nargs="+", type=int, default=None, metavar="N",
                   help="other clients on the server, one case each (default 0 2 4)")
    p.add_argument("--load-networks", nargs="+", default=None, metavar="NET",
                   help="the networks measured under load (default wifi; 3G idle only)")
    p.add_argument("--requests", type=int, default=10, help="requests per median (default 10)")
    p.add_argument("--sweep", nargs="+", type=float, default=None, metavar="F",
                   help="the device-speed sweep's dilation factors (default 1 4 16 64); 0: no sweeps and no trace")
    p.add_argument("--focus-model", default="alexnet",
                   help="the model of the device-speed and server-load sweeps and of the trace (default alexnet)")
    p.add_argument("--input-size", type=int, default=112, help="image models' input size (default 112; 0 = own)")
    p.add_argument("--workdir", default=".cache/evaluate", help="where models and bundles are kept between runs")
    p.add_argument("--report-only", action="store_true", help="measure nothing: make the report from the raw files")
    p.add_argument("--quiet", action="store_true", help="no progress")
    p.set_defaults(run=evaluate)

    p = verbs.add_parser("emulate", help="run an aarch64 bundle's run.py under qemu on the emulated board",
                         usage="neurosurgeon emulate BUNDLE [--cpu CPU] -- [run.py args ...]")
    p.add_argument("bundle", help="bundle folder whose mobile side is aarch64-neon")
    _add_board_options(p)
    p.add_argument("runtime_args", nargs=argparse.REMAINDER, metavar="-- run.py args",
                   help="passed to the bundle's run.py, e.g. -- --server http://127.0.0.1:8000 --cut all")
    p.set_defaults(run=emulate)

    p = verbs.add_parser("gpu-pack", help="a folder to run on a GPU machine without TVM: cuda bundles, TVM's runtime, "
                                          "references and check.py (every cut checked and timed there)")
    p.add_argument("-o", "--output", default=".gpu-pack", help="the pack folder (default .gpu-pack, ignored by git)")
    p.add_argument("--preset", default="cuda-sm90", help="the server preset to pack (default cuda-sm90)")
    p.add_argument("--python", default="3.12", help="the GPU machine's CPython version (default 3.12)")
    p.add_argument("--models", nargs="+", metavar="NAME[:WIDTH[:SIZE]]",
                   help="zoo models with their width and input size (default alexnet:0.125 resnet18:0.5 mobilenetv2)")
    p.add_argument("--force", action="store_true", help="replace an existing pack")
    p.add_argument("--quiet", action="store_true", help="no progress")
    p.set_defaults(run=gpu_pack)

    p = verbs.add_parser("emulate-rpc", help="run the runtime's RPC server on the emulated aarch64 board "
                                             "(a board for tune --rpc)")
    p.add_argument("--port", type=int, default=9090)
    p.add_argument("--cpu", choices=CPUS, default="cortex-a72")
    p.set_defaults(run=emulate_rpc)


def zoo(args) -> int:
    from ..runtime.errors import NeurosurgeonError
    from ..tools import zoo

    if args.list or not args.name:
        for name, description in zoo.MODELS.items():
            print(f"{name:12s} {description}")
        return 0
    try:
        model = zoo.build(args.name, input_size=args.input_size, width=args.width, seed=args.seed)
    except ValueError as err:
        raise NeurosurgeonError(str(err)) from None
    out = Path(args.output or f"{args.name}.onnx")
    zoo.save(model, out)
    print(f"{out}: {args.name}, {len(model.graph.node)} nodes, "
          f"input {[d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]}")
    return 0


def demo(args) -> int:
    from ..tools.demo import run_demo

    device = f"quota:{args.mobile_share:g}:{max(4, 1 / args.mobile_share):g}" if args.mobile_share else args.device
    return run_demo(Path(args.workdir), args.model, args.input_size or None, device, args.requests)


def evaluate(args) -> int:
    import shlex
    import sys

    from ..runtime.errors import NeurosurgeonError
    from ..tools import zoo
    from ..tools.evaluate import EvaluateOptions, run_evaluate
    from ..tools.evaluate.report import write_report

    unknown = [m for m in args.models if m not in zoo.MODELS]
    if unknown:
        raise NeurosurgeonError(f"unknown model(s) {', '.join(unknown)}; valid: {', '.join(zoo.MODELS)}")
    options = EvaluateOptions(device=args.device, requests=args.requests, input_size=args.input_size or None,
                              workdir=Path(args.workdir), progress=not args.quiet)
    for name in ("models", "networks", "objectives", "loads", "load_networks"):
        value = getattr(args, name)
        if value:
            setattr(options, name, tuple(value))
    if args.sweep == [0]:
        options.focus_model = None
    else:
        options.sweep = tuple(args.sweep or options.sweep)
        options.focus_model = args.focus_model
        if args.focus_model not in zoo.MODELS:
            raise NeurosurgeonError(f"unknown sweep model {args.focus_model}; valid: {', '.join(zoo.MODELS)}")
    command = "neurosurgeon evaluate " + shlex.join(sys.argv[2:]) if sys.argv[1:2] == ["evaluate"] else None
    out = Path(args.output)
    report = write_report(out, options) if args.report_only else run_evaluate(out, options, command)
    print(f"report: {report}")
    return 0


def emulate(args) -> int:
    from ..tools.board import run_bundle

    runtime_args = args.runtime_args
    if "--" in runtime_args:  # REMAINDER also took the options between BUNDLE and `--`: they are ours
        split = runtime_args.index("--")
        own, runtime_args = runtime_args[:split], runtime_args[split + 1:]
        _add_board_options(argparse.ArgumentParser(prog="neurosurgeon emulate BUNDLE")).parse_args(own, namespace=args)
    # The board is built on first use (progress on stderr); run.py's output is not captured but
    # streams straight to this terminal.
    return run_bundle(args.bundle, runtime_args, cpu=args.cpu, capture_output=False).returncode


def emulate_rpc(args) -> int:
    from ..tools.board import start_rpc_server

    with start_rpc_server(args.port, args.cpu) as server:
        print(f"RPC server on the emulated aarch64 board ({args.cpu}) at {server.address}; tune with "
              f"`neurosurgeon tune MODEL --target aarch64-neon --rpc {server.address} ...`; Ctrl-C stops it", flush=True)
        try:
            server.process.wait()
        except KeyboardInterrupt:
            pass
    return 0


def gpu_pack(args) -> int:
    from ..runtime.errors import NeurosurgeonError
    from ..tools.gpu_pack import DEFAULT_MODELS, PackModel, build_gpu_pack

    models = DEFAULT_MODELS
    if args.models:
        try:
            models = tuple(PackModel(name, *(float(width) if i == 0 else int(width) for i, width in enumerate(rest)))
                           for name, *rest in (spec.split(":") for spec in args.models))
        except (TypeError, ValueError):
            raise NeurosurgeonError(f"--models {' '.join(args.models)}: expected NAME[:WIDTH[:SIZE]], "
                                    "e.g. resnet18:0.5:224") from None
    pack = build_gpu_pack(args.output, models, args.preset, args.python, args.force, progress=not args.quiet)
    print(f"{args.output}: {len(pack['models'])} {pack['preset']} bundles ("
          + ", ".join(f"{m['name']} x{m['width']:g}, {m['segments']} segments" for m in pack["models"])
          + f"), TVM's runtime for CPython {pack['python']}, {pack['bytes'] / 2**20:.1f} MiB; on the GPU machine: "
          f"python3 {args.output}/check.py OUT_FOLDER")
    return 0
