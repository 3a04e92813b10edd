"""tune: tune a model's distinct segment workloads into a tuning folder that `compile --tuning DIR`
applies; run it again to resume, or with another model to add that model's new workloads."""

from __future__ import annotations

from .common import add_model, add_partitioner, input_shapes, preset_help

__all__ = ["register"]


def register(verbs) -> None:
    from ..compiler.kernels import DEFAULT_KERNELS, KERNEL_CHOICES
    from ..compiler.tuning.search import DEFAULT_TRIALS

    p = verbs.add_parser("tune", help="tune a model's segment workloads into a database compile --tuning applies")
    add_model(p)
    p.add_argument("--target", required=True, metavar="PRESET", help=f"target preset: {preset_help()}")
    p.add_argument("--budget", required=True, type=float, metavar="SECONDS",
                   help="stop cleanly between tasks before this much time is spent (run again to resume); "
                        "new tile choices are then checked on the whole model (two builds)")
    p.add_argument("-o", "--output", required=True, metavar="DIR",
                   help="tuning folder (e.g. PRESET.tuning/); created, or extended if it exists")
    p.add_argument("--trials-per-task", type=int, metavar="N",
                   help=f"candidates per workload (default {DEFAULT_TRIALS[True]} where the target runs here or on "
                        f"a board, {DEFAULT_TRIALS[False]} where nothing can time them)")
    p.add_argument("--whole-model", action="store_true",
                   help="also tune the unsplit model's workloads (for a monolithic build)")
    p.add_argument("--rpc", metavar="HOST:PORT",
                   help="time candidates on a board through TVM RPC: run `python -m neurosurgeon_runtime rpc-server "
                        "--port PORT` there (from an unpacked bundle). If it cannot be reached, tuning goes on "
                        "without measurement and the folder and bundles say so")
    p.add_argument("--kernels", choices=KERNEL_CHOICES, default=DEFAULT_KERNELS,
                   help=f"CPU targets: the kernel choice the bundles will be compiled with (default {DEFAULT_KERNELS})")
    add_partitioner(p)  # the bundles' segments, whose workloads are tuned
    p.add_argument("--quiet", action="store_true", help="no progress")
    p.set_defaults(run=tune)


def tune(args) -> int:
    from .. import api

    options = api.TuneOptions(args.target, args.output, args.budget, input_shapes=input_shapes(args),
                              trials_per_task=args.trials_per_task, whole_model=args.whole_model,
                              kernels=args.kernels, rpc=args.rpc, partitioner=args.partitioner,
                              progress=not args.quiet)
    report = api.tune(args.model, options)
    print(report.summary())
    if not report.measured:
        print(f"note: {report.unmeasured_reason or report.preset + ' cannot run on this machine'}; candidates were "
              "built but not timed: the schedules are valid but their speed is unknown (the folder and bundles "
              "compiled with it say measured: false). Give --rpc HOST:PORT to time them on a board.")
    return 0
