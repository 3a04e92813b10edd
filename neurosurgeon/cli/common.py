"""Arguments several verbs share."""

from __future__ import annotations

import argparse

__all__ = ["add_input_shape", "add_model", "add_partitioner", "input_shapes", "preset_help"]


def add_input_shape(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input-shape", action="append", metavar="NAME=D1,D2,...",
                        help="freeze an input's shape (repeat for several inputs), e.g. input=1,3,224,224")


def add_model(parser: argparse.ArgumentParser, zoo: bool = False) -> None:
    """The MODEL argument (an ONNX file; with `zoo`, also a zoo model's name) and --input-shape."""
    parser.add_argument("model", help="ONNX model file" + (", or the name of a zoo model (neurosurgeon zoo --list)"
                                                             if zoo else ""))
    add_input_shape(parser)
    if zoo:
        parser.add_argument("--input-size", type=int, help="zoo models: input height = width")


def input_shapes(args: argparse.Namespace) -> dict[str, tuple[int, ...]]:
    from ..compiler.frontend import parse_input_shapes

    return parse_input_shapes(args.input_shape)


def preset_help(side: str | None = None) -> str:
    from ..targets import preset_names

    return ", ".join(preset_names(side))


def add_partitioner(p) -> None:
    p.add_argument("--partitioner", metavar="NAME", help="which layer boundaries are candidate cuts: upload-envelope (default) keeps, of "
                        "fused-layers' cuts, only those that upload or download less than every cut before them "
                        "(no other can win while the server is no slower than the device); fused-layers keeps a "
                        "pointwise layer (activation, batch norm, bias) with the layer before it, as a compiler "
                        "fuses them, and cuts everywhere else; "
                        "layer-boundaries cuts after every layer")
