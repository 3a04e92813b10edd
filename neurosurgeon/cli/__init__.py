"""`neurosurgeon` command line: parses arguments, calls the Python API, prints. Nothing else lives here.

One module per verb group; each `register(verbs)` adds its verbs, every one with `run=` a handler
that takes the parsed arguments and returns an exit code. A new verb is a new function in the group
it belongs to (or a new group module listed in GROUPS).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ..runtime.errors import NeurosurgeonError

__all__ = ["GROUPS", "build_parser", "main"]

# compile: inspect, compile, verify; tune; costs: profile, fit; serve; tools: zoo, demo, emulate,
# emulate-rpc; bench: speed, runtime, decisions, compile, suite
GROUPS = ("compile", "tune", "costs", "serve", "tools", "bench")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(prog="neurosurgeon", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"neurosurgeon {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for group in GROUPS:
        importlib.import_module(f"{__name__}.{group}").register(verbs)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except NeurosurgeonError as err:
        print(f"neurosurgeon: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("neurosurgeon: interrupted", file=sys.stderr)
        return 130
