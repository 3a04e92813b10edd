"""profile, fit: Neurosurgeon's deployment phase (layer profiles and the cost models fitted to them),
measured mode (a bundle's own segments timed where it runs), and the server's load model."""

from __future__ import annotations

import argparse

from .common import preset_help

__all__ = ["register"]


def register(verbs) -> None:
    from ..cost_models.microbench import SCALES

    p = verbs.add_parser("profile", help="profile layer types on a target, or time a bundle's own segments")
    p.add_argument("--target", metavar="PRESET", help=f"profile layer types on a target preset: {preset_help()}")
    p.add_argument("--bundle", metavar="DIR", help="instead, time this bundle's own segments on this machine")
    p.add_argument("--side", choices=("mobile", "server"), default="mobile", help="with --bundle: which side (default mobile)")
    p.add_argument("--server-load", action="store_true",
                   help="with --bundle: fit how the server's time grows with concurrent load (server side)")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 2, 3, 4, 6],
                   help="with --server-load: concurrent clients per step (default 1 2 3 4 6)")
    p.add_argument("-o", "--output", metavar="PROFILE.json",
                   help="profile to write (required unless --kit-only); an unfinished one is resumed")
    p.add_argument("--budget", type=float, metavar="SECONDS", help="stop timing cleanly after this long")
    p.add_argument("--scale", choices=SCALES, default="default",
                   help="microbenchmark grid: default (covers the zoo), small (a few tiny layers, for tests)")
    p.add_argument("--kit", metavar="DIR", help="kit folder (default .cache/profile-kits/PRESET-SCALE)")
    p.add_argument("--kit-only", action="store_true", help="build the kit and stop (to run it on a board)")
    p.add_argument("--repeats", type=int, default=7, help="timed samples per layer (default 7; median kept)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs per layer first (default 2)")
    p.add_argument("--quiet", action="store_true", help="no progress")
    p.set_defaults(run=profile)

    p = verbs.add_parser("fit", help="fit per-layer-type cost regressions to a profile")
    p.add_argument("profile", help="profile JSON written by the profiler")
    p.add_argument("-o", "--output", required=True, metavar="COSTMODEL.json", help="cost model to write")
    p.add_argument("--report", metavar="PNG", help="draw predicted (cross-validated) vs measured times")
    p.add_argument("--seed", type=int, default=0, help="seed of the cross-validation folds and trees")
    p.set_defaults(run=fit)


def profile(args: argparse.Namespace) -> int:
    from .. import api
    from ..runtime.errors import NeurosurgeonError

    if args.bundle and args.server_load:
        model, path = api.fit_server_load(args.bundle, args.clients, seconds=max(2.0, args.budget or 4.0))
        print(f"server load model: wait = {model['alpha']:.3f} x queue x mean_service + {model['beta'] * 1e3:.2f} ms "
              f"over {model['points']} requests with {model['clients']} clients (mean abs error "
              f"{model['mean_abs_error_s'] * 1e3:.1f} ms): {path}; the server reports its expected wait with it")
        return 0
    if args.bundle:
        path = api.measure(args.bundle, args.side, repeats=args.repeats)
        print(f"measured the {args.side} side's segments of {args.bundle} here: {path} (the runtime now decides with "
              "them; `run.py --costs predicted` uses the predictions)")
        return 0
    if not args.target:
        raise NeurosurgeonError("give --target PRESET (profile layer types) or --bundle DIR (time a bundle's segments)")
    outcome = api.profile_target(args.target, args.output, args.kit, args.scale, args.kit_only, args.budget,
                                 args.repeats, args.warmup, progress=not args.quiet)
    total = sum(e["bytes"] for e in outcome.kit["entries"])
    print(f"kit {outcome.kit_dir}: {len(outcome.kit['entries'])} microbenchmarks for {outcome.preset.name} "
          f"({total / 2**20:.0f} MiB), kit id {outcome.kit['kit_id']}")
    if outcome.profile is None:
        if not outcome.preset.runs_here():
            print(f"{outcome.preset.name} does not run on this machine ({outcome.preset.device}, "
                  f"{outcome.preset.machine}): time the kit on a board.")
        print(api.board_instructions(outcome, args.budget))
        return 0
    p = outcome.profile
    state = "complete" if p["complete"] else "incomplete (run the same command again to resume)"
    print(f"profile {outcome.output}: {len(p['samples'])} of {len(outcome.kit['entries'])} layers measured, {state}")
    return 0


def fit(args: argparse.Namespace) -> int:
    from .. import api
    from ..cost_models.report import format_table

    result = api.fit(args.profile, args.output, args.report, args.seed)
    print(format_table(result))
    for note in result.notes:
        print(f"note: {note}")
    print(f"wrote {args.output}" + (f" and {args.report}" if args.report else ""))
    return 0
