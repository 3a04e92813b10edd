"""`neurosurgeon tune MODEL --target PRESET --budget SECONDS -o DIR [--input-shape NAME=DIMS ...]
[--trials-per-task N] [--whole-model] [--rpc HOST:PORT] [--kernels blas|tvm|naive] [--quiet]`: tune the model's distinct segment workloads into a
tuning folder that `neurosurgeon compile --tuning DIR` applies. Run it again to resume, or with
another model to add that model's new workloads to the same folder."""

from __future__ import annotations

import argparse

from .kernels import KERNEL_CHOICES
from .tuning import DEFAULT_TRIALS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..targets import preset_names

    parser.add_argument("model", help="ONNX model file")
    parser.add_argument("--input-shape", action="append", metavar="NAME=D1,D2,...",
                        help="freeze an input's shape (repeat for several inputs), e.g. input=1,3,224,224")
    parser.add_argument("--target", required=True, metavar="PRESET", help=f"target preset: {', '.join(preset_names())}")
    parser.add_argument("--budget", required=True, type=float, metavar="SECONDS",
                        help="stop cleanly between tasks before this much time is spent (run again to resume)")
    parser.add_argument("-o", "--output", required=True, metavar="DIR",
                        help="tuning folder (e.g. PRESET.tuning/); created, or extended if it exists")
    parser.add_argument("--trials-per-task", type=int, metavar="N",
                        help=f"candidates per workload (default {DEFAULT_TRIALS[True]} where the target runs here "
                             f"and is timed, {DEFAULT_TRIALS[False]} elsewhere)")
    parser.add_argument("--whole-model", action="store_true",
                        help="also tune the unsplit model's workloads (for a monolithic build)")
    parser.add_argument("--rpc", metavar="HOST:PORT",
                        help="time candidates on the device through TVM RPC: run `python -m neurosurgeon_runtime.rpc_server "
                             "--port PORT` there (from an unpacked bundle). If it cannot be reached, tuning goes on "
                             "without measurement and the folder and bundles say so")
    parser.add_argument("--kernels", choices=KERNEL_CHOICES, default="blas",
                        help="CPU targets: the kernel choice the bundles will be compiled with (default blas)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from .frontend import parse_input_shapes
    from .tuning import tune

    report = tune(args.model, args.target, args.output, args.budget, input_shapes=parse_input_shapes(args.input_shape),
                  trials_per_task=args.trials_per_task, progress=not args.quiet, whole_model=args.whole_model,
                  kernels=args.kernels, rpc=args.rpc)
    print(report.summary())
    if not report.measured:
        print(f"note: {report.unmeasured_reason or report.preset + ' cannot run on this machine'}; candidates were "
              "built but not timed: the schedules are valid but their speed is unknown (the folder and bundles "
              "compiled with it say measured: false). Give --rpc HOST:PORT to time them on the device.")
    return 0
