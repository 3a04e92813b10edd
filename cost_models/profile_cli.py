"""`neurosurgeon profile --target PRESET -o OUT.profile.json [--budget S] [--scale default|small]
[--kit DIR] [--kit-only]`: build (or reuse) the target's profile kit, then time it here if the target
runs on this machine; otherwise say how to run the kit on the device."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from ..runtime.errors import NeurosurgeonError
from .microbench import SCALES

DEFAULT_KIT_ROOT = Path(".cache") / "profile-kits"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..targets import preset_names

    parser.add_argument("--target", metavar="PRESET", help=f"profile layer types on a target preset: {', '.join(preset_names())}")
    parser.add_argument("--bundle", metavar="DIR", help="instead, time this bundle's own segments on this machine")
    parser.add_argument("--side", choices=("mobile", "server"), default="mobile", help="with --bundle: which side (default mobile)")
    parser.add_argument("--server-load", action="store_true",
                        help="with --bundle: fit how the server's time grows with concurrent load (server side)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 2, 3, 4, 6],
                        help="with --server-load: concurrent clients per step (default 1 2 3 4 6)")
    parser.add_argument("-o", "--output", metavar="PROFILE.json",
                        help="profile to write (required unless --kit-only); an unfinished one is resumed")
    parser.add_argument("--budget", type=float, metavar="SECONDS", help="stop timing cleanly after this long")
    parser.add_argument("--scale", choices=SCALES, default="default",
                        help="microbenchmark grid: default (covers the zoo), small (a few tiny layers, for tests)")
    parser.add_argument("--kit", metavar="DIR", help=f"kit folder (default {DEFAULT_KIT_ROOT}/PRESET-SCALE)")
    parser.add_argument("--kit-only", action="store_true", help="build the kit and stop (to run it on the device)")
    parser.add_argument("--repeats", type=int, default=7, help="timed samples per layer (default 7; median kept)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs per layer first (default 2)")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")


def run(args: argparse.Namespace) -> int:
    if args.bundle:
        return run_bundle(args)
    if not args.target:
        raise NeurosurgeonError("give --target PRESET (profile layer types) or --bundle DIR (time a bundle's segments)")
    from ..runtime.profile import profile_kit, read_kit
    from ..targets import get_preset
    from .microbench import build_kit

    preset = get_preset(args.target)
    here = preset.runs_here()
    if args.budget is not None and args.budget <= 0:
        raise NeurosurgeonError(f"--budget must be positive, got {args.budget:g}")
    if here and not args.kit_only and not args.output:
        raise NeurosurgeonError("-o PROFILE.json is required to profile here (or pass --kit-only)")
    kit_dir = Path(args.kit) if args.kit else DEFAULT_KIT_ROOT / f"{preset.name}-{args.scale}"
    build_kit(preset.name, kit_dir, args.scale, progress=not args.quiet)
    kit = read_kit(kit_dir)
    total = sum(e["bytes"] for e in kit["entries"])
    print(f"kit {kit_dir}: {len(kit['entries'])} microbenchmarks for {preset.name} ({total / 2**20:.0f} MiB), "
          f"kit id {kit['kit_id']}")
    if args.kit_only or not here:
        if not here:
            print(f"{preset.name} does not run on this machine ({preset.device}, {preset.machine}): "
                  "time the kit on the device.")
        print(_device_instructions(kit_dir, preset, args))
        return 0
    profile = profile_kit(kit_dir, args.output, budget_s=args.budget, repeats=args.repeats, warmup=args.warmup,
                          progress=not args.quiet)
    state = "complete" if profile["complete"] else "incomplete (run the same command again to resume)"
    print(f"profile {args.output}: {len(profile['samples'])} of {len(kit['entries'])} layers measured, {state}")
    return 0


def _device_instructions(kit_dir: Path, preset, args) -> str:
    out = shlex.quote(args.output or f"{preset.name}.profile.json")
    budget = f" --budget {args.budget:g}" if args.budget else " --budget 600"
    return (f"On the device (numpy and the apache-tvm package; only TVM's runtime library is loaded):\n"
            f"  scp -r {shlex.quote(str(kit_dir))} DEVICE:kit\n"
            f"  ssh DEVICE python3 kit/profile.py -o {out}{budget}      # run again to resume\n"
            f"  scp DEVICE:{out} .\n"
            f"then fit it: neurosurgeon fit {out} -o {preset.name}.costmodel.json")


def run_bundle(args: argparse.Namespace) -> int:
    """Measured mode: time the bundle's own segments here, or fit the server's load model."""
    from ..runtime.bundle import Bundle

    bundle = Bundle(args.bundle)
    if args.server_load:
        return _server_load(bundle, args)
    from ..runtime.measured import measure_bundle

    path = measure_bundle(bundle, args.side, repeats=args.repeats)
    print(f"measured the {args.side} side's {len(bundle.segments)} segments of {bundle.name} here: {path} "
          "(the device runtime now decides with them; `run.py --costs predicted` uses the predictions)")
    return 0


def _server_load(bundle, args: argparse.Namespace) -> int:
    from ..compiler.demo import start_server
    from ..compiler.verify import random_inputs
    from .server_load import fit_load_model, measure_load, save_load_model

    process, url = start_server(bundle.path)
    try:
        points = measure_load(bundle.path, url, args.clients, seconds=max(2.0, args.budget or 4.0),
                              feeds=random_inputs(bundle))
    finally:
        process.terminate()
        process.wait(timeout=30)
    model = fit_load_model(points)
    path = save_load_model(bundle.path, model)
    print(f"server load model for {bundle.name}: wait = {model['alpha']:.3f} x queue x mean_service + "
          f"{model['beta'] * 1e3:.2f} ms over {model['points']} requests with {model['clients']} clients "
          f"(mean abs error {model['mean_abs_error_s'] * 1e3:.1f} ms): {path}; the server reports its expected wait with it")
    return 0
