"""The runtime's own command lines, for what runs where only the runtime is (numpy, the standard
library and TVM's runtime library; never the neurosurgeon package): a bundle's run.py, a profile
kit's profile.py, and the RPC server a board runs for tuning.

    python run.py --server http://HOST:8000 ...             # a bundle's generated run.py -> run_main
    python profile.py -o mobile.profile.json ...            # a profile kit's script -> profile_main
    python -m neurosurgeon_runtime rpc-server --port 9090   # from an unpacked bundle -> rpc_server_main
    python -m neurosurgeon.runtime run BUNDLE ...           # a bundle run by an installed runtime -> run_main

Running a bundle with an installed runtime (`run`) executes none of the bundle's own Python: with
--trust-key, nothing the bundle brings runs before its signature is verified.

Every other command line lives in the command package (neurosurgeon/cli/).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from .auth import read_token
from .bundle import Bundle
from .errors import BundleError, NeurosurgeonError
from .planner import NETWORKS, OBJECTIVES, PLANNERS, Budgets
from .signing import read_public_key
from .workers import peak_resident_mib

__all__ = ["main", "profile_main", "rpc_server_main", "run_bundle_main", "run_main"]


def run_main(bundle_dir: str | Path, expected_bundle_id: str | None = None, argv: list[str] | None = None,
             prog: str = "run.py") -> int:
    """A bundle's run.py: run its model split between this mobile machine and a server."""
    from .measured import measure_bundle
    from .mobile import (
        COST_SOURCES,
        MobileRuntime,
        describe,
        read_inputs,
        write_outputs,
    )

    parser = argparse.ArgumentParser(prog=prog, description="Run this bundle's model, split between this machine and a "
                                                            "server.")
    parser.add_argument("--server", help="server URL, e.g. http://host:8000 (none: run everything here)")
    parser.add_argument("--input", help=".npy (or .npz by input name); random input if omitted")
    parser.add_argument("-o", "--output", help="write the outputs here (.npy, or .npz for several)")
    parser.add_argument("--objective", choices=OBJECTIVES, default="latency")
    parser.add_argument("--network", default="wifi", choices=list(NETWORKS),
                        help="the network whose nominal link seeds the estimates (default wifi)")
    parser.add_argument("--cut", default="auto",
                        help="auto (the planner's choice), a cut index to force, or all: one request at each cut 0..S")
    parser.add_argument("--schedule", metavar="STAGES",
                        help='force a schedule: its stages ("m0-4 s5-9 m10-11") or a side per segment ("mmmssm")')
    parser.add_argument("--planner", choices=list(PLANNERS),
                        help="prefix (a cut), shortest-path (several transfers), min-cut (DAG placement); "
                             "default: the bundle's")
    parser.add_argument("--token-file", help="file whose first line is the server's bearer token")
    parser.add_argument("--ca-file", help="verify an https:// server's certificate with this CA (PEM)")
    parser.add_argument("--allow-plain-token", action="store_true",
                        help="send the token over http:// to another host (refused by default)")
    parser.add_argument("--trust-key", metavar="PUB.pem",
                        help="run the bundle only if it is signed with this Ed25519 key (compile --sign-key)")
    parser.add_argument("--shape", action="store_true", help="shape this client's transfers to the network's link")
    parser.add_argument("--deadline", type=float, help="seconds to wait for the server before finishing here")
    parser.add_argument("--compression", default="auto", metavar="MODE",
                        help="uploads: auto (lossless, where it pays at the link's rate; default), off, or a lossy "
                             "codec asked for by name (float16, int8)")
    parser.add_argument("--max-latency", type=float, metavar="S", help="latency budget in seconds (QoS)")
    parser.add_argument("--max-energy", type=float, metavar="J", help="mobile energy budget in joules (battery)")
    parser.add_argument("--max-server", type=float, metavar="S", help="budget of time on the server, in seconds")
    parser.add_argument("--costs", default="default",
                        help=f"per-segment times: {', '.join(COST_SOURCES)}, or a costs JSON file")
    parser.add_argument("--measure", action="store_true",
                        help="first time this machine's segments and keep them in the bundle (measured/mobile.json)")
    parser.add_argument("--requests", type=int, default=1, help="repeat the request (with --cut all: the sweep) N times")
    parser.add_argument("--json", action="store_true", help="print one JSON record per request")
    args = parser.parse_args(argv)
    sweep = args.cut == "all"
    if sweep and args.output and not args.output.endswith(".npz"):
        parser.error("--cut all saves every cut's outputs: give -o FILE.npz")
    if args.schedule and args.cut != "auto":
        parser.error("--schedule and --cut both fix the schedule: give one")
    try:
        bundle = Bundle(bundle_dir, trust_key=read_public_key(args.trust_key) if args.trust_key else None)
        if expected_bundle_id and bundle.bundle_id != expected_bundle_id:
            raise BundleError(f"{bundle_dir}: manifest is for bundle {bundle.bundle_id}, "
                              f"this run.py was generated for {expected_bundle_id}")
        token = read_token(args.token_file) if args.token_file else None
        if args.measure:
            path = measure_bundle(bundle, "mobile")
            print(f"measured this machine's {len(bundle.segments)} segments: {path}", file=sys.stderr)
        budgets = Budgets(args.max_latency, args.max_energy, args.max_server)
        runtime = MobileRuntime(bundle, args.server, token, args.network, args.objective, args.shape, args.deadline,
                                budgets=budgets, costs=args.costs, planner=args.planner, ca_file=args.ca_file,
                                allow_plain_token=args.allow_plain_token, compression=args.compression)
        inputs = read_inputs(bundle, args.input)
        runtime.check_inputs(inputs)  # before any of the bundle's code loads
        cuts = range(runtime.n_segments + 1) if sweep else [args.schedule or args.cut]
        runtime.warm_up("auto" if sweep else cuts[0])
        saved = {}
        for _ in range(args.requests):
            for cut in cuts:
                outputs, record = runtime.infer(inputs, cut)
                print(json.dumps(asdict(record)) if args.json else describe(record, bundle), flush=True)
                # A sweep keeps every cut's outputs apart; otherwise the last request's are saved.
                saved.update({f"cut{cut:03d}/{name}": value for name, value in outputs.items()}
                             if sweep else outputs)
        if args.output:
            write_outputs(saved, args.output)
        held, nbytes = runtime.executor.held()
        peak = peak_resident_mib()
        print(f"run.py: held {held} of {runtime.n_segments} segments here ({nbytes / 2**20:.1f} MiB of artifacts); "
              f"peak resident memory {'unknown' if peak is None else f'{peak:.0f} MiB'}", file=sys.stderr)
    except (NeurosurgeonError, ValueError) as err:
        print(f"run.py: error: {err}", file=sys.stderr)
        return 2
    return 0


def profile_main(kit_dir: str | Path, argv: list[str] | None = None) -> int:
    """A profile kit's profile.py: time the kit's layer microbenchmarks on this machine."""
    from .profile import profile_kit, read_kit

    parser = argparse.ArgumentParser(prog="profile.py", description="Time this profile kit's layer microbenchmarks "
                                     "on this machine (resumes an interrupted profile with the same output).")
    parser.add_argument("-o", "--output", required=True, metavar="PROFILE.json", help="the profile to write")
    parser.add_argument("--budget", type=float, metavar="SECONDS", help="stop cleanly after this long (resume later)")
    parser.add_argument("--repeats", type=int, default=7, help="timed samples per layer (default 7; median kept)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs first (default 2)")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    args = parser.parse_args(argv)
    if args.budget is not None and args.budget <= 0:
        parser.error("--budget must be positive")
    try:
        profile = profile_kit(kit_dir, args.output, budget_s=args.budget, repeats=args.repeats, warmup=args.warmup,
                              progress=not args.quiet)
    except NeurosurgeonError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted: what was measured is in {args.output}; run again to resume", file=sys.stderr)
        return 130
    print(json.dumps({"output": str(args.output), "measured": len(profile["samples"]),
                      "total": len(read_kit(kit_dir)["entries"]), "complete": profile["complete"]}))
    return 0


def rpc_server_main(argv: list[str] | None = None) -> int:
    """The RPC server a board runs for `neurosurgeon tune --rpc` (runtime/rpc_server.py)."""
    from .rpc_server import serve_rpc

    parser = argparse.ArgumentParser(prog="python -m neurosurgeon_runtime rpc-server",
                                     description="Time candidate kernels for `neurosurgeon tune --rpc HOST:PORT`.")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=9090)
    parser.add_argument("--threads", type=int, help="threads for timed kernels (default: every usable core)")
    args = parser.parse_args(argv)
    serve_rpc(args.host, args.port, args.threads)
    return 0


def run_bundle_main(argv: list[str] | None = None) -> int:
    """`python -m neurosurgeon.runtime run BUNDLE [run.py options]`: a bundle run by this runtime."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0].startswith("-"):
        print("usage: python -m neurosurgeon_runtime run BUNDLE [run.py options]", file=sys.stderr)
        return 2
    return run_main(argv[0], argv=argv[1:], prog=f"run {argv[0]}")


_COMMANDS = {"rpc-server": rpc_server_main, "run": run_bundle_main}


def main(argv: list[str] | None = None) -> int:
    """`python -m neurosurgeon_runtime COMMAND ...` (the runtime package's own entry point)."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in _COMMANDS:
        print(f"usage: python -m neurosurgeon_runtime {{{','.join(_COMMANDS)}}} ... "
              "(a bundle runs with its run.py, a profile kit with its profile.py)", file=sys.stderr)
        return 2
    return _COMMANDS[argv[0]](argv[1:])
