"""Register-tiled TIR kernels for the products (convolutions with groups=1, matmuls with a constant
right-hand side): what `--kernels tvm` builds in place of im2col + BLAS.

Each kernel keeps a tile of outputs in vector registers while it runs the whole reduction, then
writes the tile once:

- `direct_conv2d`: no im2col. The weights are packed at compile time as [O/B, C, KH, KW, B] (B
  output channels, one or two vectors); a tile is R output columns x B channels, and each step of
  the reduction is B/lanes vector loads of weights and R broadcasts of an input element, R x B/lanes
  fused multiply-adds (the blocked direct convolution of oneDNN and TVM's conv2d_NCHWc, on NCHW
  tensors). The write-back transposes the tile (scalar stores).
- `pointwise_conv2d`: a 1x1 stride-1 convolution is a product [O, C] x [C, H*W]; its tile is
  8 output channels x 2 vectors of positions, the weights broadcast, the input read as vectors.
  (As a direct convolution its short reductions spent a large share in the tile's transposed
  write-back.)
- `winograd_conv2d`: a 3x3 stride-1 convolution over whole vectors of channels as Winograd's
  F(2x2, 3x3): each 4x4 patch of input becomes 16 transformed values per
  channel, 16 products over the channels (weights transformed at compile time) give the 16
  transformed outputs of a 2x2 output tile, which an inverse transform turns into it: 2.25x fewer
  multiply-adds than the direct kernel, the transforms adds only.
- `dense`: [M, K] x [K, N] with the weights packed as [N/B, K, B]; a tile is up to R rows x B
  columns.

A per-channel epilogue (bias, ReLU, Clip's max/min: compiler/kernels.py finds the operators that
follow a product) is applied before the write-back, to the tile in registers where the write-back
transposes it; a skip connection's add (a tensor of the output's shape), and the steps after it, as
the tile is written.

Every output element is a sum over its reduction in one fixed order whatever the tile or the
batch, so a sample's answer is the same bit for bit alone and in a batch (the server batches).
The kernels run on TVM's thread pool (the parallel tasks are rows or ranges of positions, or output
channel blocks x rows where a convolution's weights outweigh its input),
so a build whose products are these calls no BLAS and TVM's pool has every thread
(runtime/threads.py). Measured against numpy's OpenBLAS on an AMD EPYC (Zen 5), one thread: 3x3
convolutions of ResNet-18 0.74-0.91x the BLAS GEMM alone (without the im2col it needs), 1x1
convolutions 1.1-1.5x.
"""

from __future__ import annotations

import numpy as np

__all__ = ["EPILOGUE_STEPS", "TILE_KNOBS", "TILED", "TileChoices", "conv_kernel", "conv_key", "conv_variants",
           "depthwise_conv2d_nchwc", "direct_conv2d", "dense", "is_tiled", "padded_bias", "pointwise_conv2d",
           "vector_registers", "winograd_conv2d"]

TILE_KNOBS = ("block", "tile", "rows_outer")  # what a tile choice sets (`direct_conv2d`'s arguments)


def vector_registers(lanes: int) -> int:
    """Architectural vector registers: 32 on AVX-512 and AArch64 NEON, 16 on AVX2."""
    return 16 if lanes == 8 else 32


def _whole(extent: int, unit: int) -> int:
    """`extent` rounded up to a whole number of `unit`s: the output channels a kernel computes in
    whole vectors, the columns it computes in whole row tiles (what pads them is never written)."""
    return -(-extent // unit) * unit


def _whole_vectors(channels: int, lanes: int) -> int:
    """`channels` rounded up to a whole number of vectors: the output channels a kernel computes (the
    padding gets zero weights and is never written)."""
    return _whole(channels, lanes)


def padded_bias(bias: np.ndarray, packed: np.ndarray) -> np.ndarray:
    """A bias for a kernel whose packed weight is `packed` ([blocks, ..., block], every kernel here):
    zeros up to the output channels it computes."""
    channels = packed.shape[0] * packed.shape[-1]
    return np.pad(np.asarray(bias, dtype=np.float32), (0, channels - len(bias)))


def _row_tile(extent: int, most: int) -> int:
    """Outputs per tile along a row: the largest divisor of `extent` up to `most` when it is at least
    half of `most`, else `most` (the last tile then runs partly empty, under a predicate)."""
    if extent <= most:
        return extent
    divisor = max(d for d in range(1, most + 1) if extent % d == 0)
    return divisor if 2 * divisor >= most else most


def _conv_tile(out_channels: int, width: int, lanes: int) -> tuple[int, int]:
    """(output channels per tile, output columns per tile) of a direct convolution with
    `out_channels` a whole number of vectors, the tile held
    as accumulators in vector registers (14 of AVX-512's and NEON's 32, 8 of AVX2's 16): one vector
    of channels by up to that many columns, or two vectors by half as many (two weight loads per row
    of broadcasts instead of one: AMD EPYC Zen 5, one thread, ResNet-18's 512-channel 7x7
    convolution 166 -> 210 GFLOP/s, MobileNetV2's 1x1 ones at 7x7 and 14x14 136-143 -> 165-188),
    whichever has a row tile that divides the row, then more accumulators, then two vectors."""
    columns = 14 if vector_registers(lanes) == 32 else 8
    options = [(lanes, _row_tile(width, columns))]
    if out_channels % (2 * lanes) == 0:
        options.append((2 * lanes, _row_tile(width, columns // 2)))

    def rank(option):
        block, tile = option
        return width % tile == 0, -(-block // lanes) * tile, block

    return max(options, key=rank)


TILED = "neurosurgeon.tiled"  # attribute marking these kernels (scheduled here, not by tuning)


OPAQUE = 8  # Relax's op pattern kOpaque: fusion leaves the kernel alone (it would drop the schedule)


def is_tiled(func) -> bool:
    """Whether a PrimFunc is one of these kernels (scheduled where it was made, not by tuning)."""
    return func.attrs is not None and bool(func.attrs.get(TILED, False))


def _finish(sch):
    attrs = {"tirx.is_scheduled": True, TILED: True, "op_pattern": OPAQUE}
    return sch.mod["main"].without_attr("global_symbol").with_attr(attrs)


EPILOGUE_STEPS = ("bias", "relu", "max", "min", "residual")


def _epilogue_inputs(epilogue, channels: int, out_shape) -> list:
    """The placeholders an epilogue reads, in its steps' order: a bias [channels] per "bias" step, a
    tensor of the output's shape per "residual" step (a skip connection's add)."""
    from tvm import te

    inputs = []
    for i, step in enumerate(epilogue):
        if step[0] not in EPILOGUE_STEPS:
            raise ValueError(f"unknown epilogue step {step!r}")
        if step[0] == "bias":
            inputs.append(te.placeholder((channels,), "float32", name=f"bias{i}"))
        elif step[0] == "residual":
            inputs.append(te.placeholder(tuple(out_shape), "float32", name=f"residual{i}"))
    return inputs


def _split_at_residual(epilogue):
    """(the steps before the first residual, the rest): a kernel whose write-back transposes its tile
    applies the first to the tile in registers and the rest as it writes, where the residual's
    element is the output's."""
    first = next((i for i, step in enumerate(epilogue) if step[0] == "residual"), len(epilogue))
    return tuple(epilogue[:first]), tuple(epilogue[first:])


def _apply_epilogue(value, epilogue, inputs, channel, index=None):
    """`value` (the output element at `index`, of channel `channel`) through the epilogue's steps in
    order, as the separate operators would compute them: the same result without a pass over
    memory. `inputs`: the placeholders of these steps (`_epilogue_inputs`), in order."""
    from tvm import tirx

    inputs = iter(inputs)
    for step in epilogue:
        kind = step[0]
        if kind == "bias":
            value = value + next(inputs)[channel]
        elif kind == "residual":
            value = value + next(inputs)[tuple(index)]
        elif kind == "relu":
            value = tirx.max(value, tirx.const(0.0, "float32"))
        elif kind == "max":
            value = tirx.max(value, tirx.const(step[1], "float32"))
        else:
            value = tirx.min(value, tirx.const(step[1], "float32"))
    return value


def _tile_reduction(sch, acc: str, out: str, parallel: int, reductions: int, tile: int, vector_store: bool = False,
                    in_registers: str | None = None, serial: int = 0):
    """Schedule block `acc`, loops [parallel..., row, vector, reductions...]: rows split by `tile`,
    the reductions outside the row tile and the vector, the tile accumulated in registers and
    written to `out` once (its innermost loop vectorised where `vector_store`: the out block's last
    axis is the vector's). `in_registers`: a block of acc's shape between the two (the epilogue,
    applied to the tile in registers, vectorised). The first `parallel` loops are fused into the
    parallel tasks; `serial` loops after them run inside a task."""
    block = sch.get_sblock(acc)
    loops = sch.get_loops(block)
    tasks, parallel = parallel, parallel + serial  # the first `parallel` loops are the tasks, `serial` loops follow
    outer, row, vector, reduce = loops[:parallel], loops[parallel], loops[parallel + 1], loops[parallel + 2:]
    assert len(reduce) == reductions
    row_outer, row_inner = sch.split(row, [None, tile])
    sch.reorder(*outer, row_outer, *reduce, row_inner, vector)
    sch.set_scope(block, 0, "local")
    if in_registers is not None:
        between = sch.get_sblock(in_registers)
        sch.set_scope(between, 0, "local")
        sch.reverse_compute_at(between, row_outer)
        sch.vectorize(sch.get_loops(between)[-1])
    sch.reverse_compute_at(sch.get_sblock(out), row_outer)
    fused = sch.fuse(*outer[:tasks]) if tasks > 1 else outer[0]
    sch.parallel(fused)
    sch.vectorize(vector)
    sch.unroll(row_inner)
    init = sch.decompose_reduction(block, reduce[0])
    sch.vectorize(sch.get_loops(init)[-1])
    if vector_store:
        sch.vectorize(sch.get_loops(sch.get_sblock(out))[-1])
    return block


def conv_key(data_shape, weight_shape, strides, padding, dilation) -> str:
    """A convolution's geometry as a tuning folder names it (its tile choice depends on nothing else),
    e.g. "conv2d 1x64x56x56 w64x64x3x3 s1x1 p1x1x1x1 d1x1"."""
    def dims(values):
        return "x".join(str(int(v)) for v in values)

    return (f"conv2d {dims(data_shape)} w{dims(weight_shape)} s{dims(strides)} p{dims(padding)} "
            f"d{dims(dilation)}")


def conv_variants(data_shape, weight_shape, strides, padding, dilation, lanes: int, winograd: bool = True,
                  **layouts) -> list[dict]:
    """The tile choices tuning times for a convolution: {} (the default, first), then the direct
    kernel with one or two vectors of output channels, row tiles of up to 7, 8 or 14 columns and the
    tasks by rows or by channel blocks x rows (`direct_conv2d`'s `block`, `tile`, `rows_outer`). A
    1x1 convolution the pointwise kernel takes by default (in NCHW: no `layouts`) also gets the
    direct ones. Every choice sums each output in the same order: the results are the same bits. A
    convolution `winograd_conv2d` takes has no other choice (the direct kernel's sums would differ);
    with `winograd` False (`--kernels tvm-direct`) it has the direct kernel's."""
    if winograd and _takes_winograd(data_shape, weight_shape, strides, padding, dilation, lanes):
        return [{}]  # its tiles sum in the order Winograd's transform does, not the direct kernel's: no choice
    _, ow = _conv_output(data_shape, weight_shape, strides, padding, dilation)
    padded = _whole_vectors(weight_shape[0], lanes)
    pointwise = not any(layouts.values()) and _takes_pointwise(weight_shape, strides, padding)
    default = None if pointwise else _direct_default(
        data_shape, weight_shape, strides, padding, dilation, lanes)
    variants = [{}]
    for block in (b for b in (lanes, 2 * lanes) if padded % b == 0):
        for tile in sorted({_row_tile(ow, most) for most in (7, 8, 14)}):
            if -(-block // lanes) * tile > vector_registers(lanes) // 2:  # accumulators; the rest: weights, broadcasts
                continue
            variants += [choice for rows_outer in (True, False)
                         if (choice := {"block": block, "tile": tile, "rows_outer": rows_outer}) != default]
    return variants


def _conv_output(data_shape, weight_shape, strides, padding, dilation) -> tuple[int, int]:
    (_, _, height, width), (_, _, kh, kw) = data_shape, weight_shape
    top, left, bottom, right = padding
    return ((height + top + bottom - dilation[0] * (kh - 1) - 1) // strides[0] + 1,
            (width + left + right - dilation[1] * (kw - 1) - 1) // strides[1] + 1)


def _takes_winograd(data_shape, weight_shape, strides, padding, dilation, lanes: int) -> bool:
    """Whether the default for this convolution is `winograd_conv2d`: 3x3, stride 1, no dilation,
    input channels in whole vectors (a first layer's 3 channels keep the direct kernel), an output
    of at least 3 x 3 (two tiles each way; smaller, the tiles are mostly padding)."""
    oh, ow = _conv_output(data_shape, weight_shape, strides, padding, dilation)
    return (tuple(weight_shape[2:]) == (3, 3) and tuple(strides) == (1, 1) and tuple(dilation) == (1, 1)
            and data_shape[1] % lanes == 0 and min(oh, ow) >= 3)


def _takes_pointwise(weight_shape, strides, padding) -> bool:
    """Whether the default for this convolution is the pointwise kernel (where its tiles fit)."""
    return tuple(weight_shape[2:]) == (1, 1) and tuple(strides) == (1, 1) and not any(padding)


def _direct_default(data_shape, weight_shape, strides, padding, dilation, lanes: int) -> dict:
    """`direct_conv2d`'s own choice: `_conv_tile`'s tile; tasks by rows where the packed weights are no
    larger than the input (see there)."""
    (_, channels, height, width), (out_channels, _, kh, kw) = data_shape, weight_shape
    oh, ow = _conv_output(data_shape, weight_shape, strides, padding, dilation)
    padded = _whole_vectors(out_channels, lanes)
    block, tile = _conv_tile(padded, ow, lanes)
    return {"block": block, "tile": tile,
            "rows_outer": oh >= 8 and padded * channels * kh * kw <= channels * height * width}


class TileChoices:
    """Tile choices per convolution (`conv_key` -> a `conv_variants` entry), as tuning chose them, and
    the convolutions with a choice to make that a build asked about (`asked`: key -> (data shape,
    weight shape, strides, padding, dilation, layouts), the layouts those of the first one asked:
    `direct_conv2d`'s blocked_in, blocked_out, blocked_residual), which is how tuning finds the
    convolutions of a model and the layouts to time their tiles in."""

    def __init__(self, choices: dict | None = None):
        self.choices = dict(choices or {})
        self.asked: dict[str, tuple] = {}

    def for_conv(self, data_shape, weight_shape, strides, padding, dilation, lanes: int, winograd: bool = True,
                 **layouts) -> dict:
        key = conv_key(data_shape, weight_shape, strides, padding, dilation)
        if len(conv_variants(data_shape, weight_shape, strides, padding, dilation, lanes, winograd, **layouts)) > 1:
            self.asked.setdefault(key, (tuple(data_shape), tuple(weight_shape), tuple(strides), tuple(padding),
                                        tuple(dilation), layouts))
        return self.choices.get(key, {})


def conv_kernel(data_shape, weight: np.ndarray, strides, padding, dilation, lanes: int, epilogue=(),
                choice: dict | None = None, winograd: bool = True, **layouts):
    """(kind, (PrimFunc, packed weight)) of a convolution as `choice` (a `conv_variants` entry; None or
    {}: the default) builds it: kind "winograd" (`winograd_conv2d`, where it applies, unless `winograd`
    is False), "pointwise" (its data and output flattened to [N, C, H*W], NCHW only) or "direct"
    (`layouts`: the kernels' blocked_in, blocked_out, blocked_residual)."""
    choice = choice or {}
    if not choice and winograd and _takes_winograd(data_shape, weight.shape, strides, padding, dilation, lanes):
        return "winograd", winograd_conv2d(data_shape, weight, padding, lanes, epilogue, **layouts)
    if not choice and not any(layouts.values()) and _takes_pointwise(weight.shape, strides, padding):
        tiled = pointwise_conv2d(data_shape, weight, lanes, epilogue)
        if tiled is not None:
            return "pointwise", tiled
    return "direct", direct_conv2d(data_shape, weight, strides, padding, dilation, lanes, epilogue, **choice, **layouts)


def _input(data_shape, lanes: int, blocked: bool):
    """The data placeholder of a convolution, NCHW or NCHW{lanes}c, and its channel axes."""
    from tvm import te

    batch, channels, height, width = data_shape
    blocks = (channels // lanes, lanes) if blocked else (channels,)
    return te.placeholder((batch, blocks[0], height, width, *blocks[1:]), "float32", name="data"), blocks


def _padded(data, blocks, height: int, width: int, top: int, left: int, rows: int, columns: int):
    """`data` ([N, C, height, width] or blocked) with zeros around it: `rows` x `columns`, the data
    from (top, left). A compute stage ("pad") that the kernels place inside their tasks."""
    from tvm import te, tirx

    inside = lambda i, j: tirx.all(i >= top, i < height + top, j >= left, j < width + left)  # noqa: E731
    return te.compute((data.shape[0], blocks[0], rows, columns, *blocks[1:]),
                      lambda n, c, i, j, *v: tirx.if_then_else(inside(i, j), data[(n, c, i - top, j - left, *v)],
                                                               tirx.const(0.0, "float32")), name="pad")


def _element(lanes: int, blocked: bool, n, c, y, x):
    """The index of channel c's element at (y, x), NCHW or NCHW{lanes}c."""
    return (n, c // lanes, y, x, c % lanes) if blocked else (n, c, y, x)


def _output(shape, lanes: int, blocked: bool, written):
    """The output stage ("out") of a convolution whose NCHW shape is `shape`, `written(n, c, y, x)`
    its elements, in NCHW or NCHW{lanes}c."""
    from tvm import te

    batch, channels, height, width = shape
    if blocked:
        return te.compute((batch, channels // lanes, height, width, lanes),
                          lambda n, b, y, x, v: written(n, b * lanes + v, y, x), name="out")
    return te.compute(tuple(shape), written, name="out")


def direct_conv2d(data_shape, weight: np.ndarray, strides, padding, dilation, lanes: int, epilogue=(),
                  block: int | None = None, tile: int | None = None, unroll_window: bool | None = None,
                  rows_outer: bool | None = None, blocked_in: bool = False, blocked_out: bool = False,
                  blocked_residual: bool = False):
    """(PrimFunc(data, packed weight, *epilogue inputs, out), packed weight) for an NCHW/OIHW
    float32 convolution with groups=1. Output channels that do not fill whole vectors (LeNet's 20 and
    50) get zero weights up to the next vector, and the padding's outputs are never written; an
    untiled convolution ran at TVM's naive speed (LeNet's 20 -> 50: 0.30 ms, 52% of the net).
    `epilogue`: per-channel steps applied to each output before it is written (("bias",), ("relu",),
    ("max", v), ("min", v): see `_apply_epilogue`).

    The parallel tasks are output rows (each running every block of output channels, the padded
    rows it reads made inside the task) where the weights are no larger than the input, so that a
    thread reads the rows that the kernel before it wrote in its own cache and writes those the
    next one reads there; else blocks of output channels x rows, each thread reading a share of the
    weights (`rows_outer` chooses; Intel Xeon, two threads: ResNet-18 28.6 -> 26.6 ms, MobileNetV2
    11.0 -> 10.4; one thread unchanged).

    `blocked_in` / `blocked_out` / `blocked_residual`: the data / the output / the residual add's
    operand in NCHW{lanes}c ([N, C/lanes, H, W, lanes]: see `compiler/kernels.py` `_blocked_layout`),
    each with whole vectors of channels; a blocked output is written a vector of channels at a time
    (no transpose)."""
    from tvm import s_tir, te

    batch, channels, height, width = data_shape
    out_channels, _, kh, kw = weight.shape
    sh, sw = strides
    top, left, bottom, right = padding
    dh, dw = dilation
    oh, ow = _conv_output(data_shape, weight.shape, strides, padding, dilation)
    padded = _whole_vectors(out_channels, lanes)
    default = _direct_default(data_shape, weight.shape, strides, padding, dilation, lanes)
    block, tile = block or default["block"], tile or default["tile"]
    if (blocked_in and channels % lanes) or ((blocked_out or blocked_residual) and out_channels % lanes):
        raise ValueError("a blocked layout needs whole vectors of channels")
    data, blocks_in = _input(data_shape, lanes, blocked_in)
    packed = te.placeholder((padded // block, channels, kh, kw, block), "float32", name="weight")
    # The tile accumulates whole tiles of a row: where the tile does not divide the row, the last one
    # runs on past its end over zeros padded on the right, and only the row's outputs are written.
    # Cut short instead, every multiply-add of every tile sat under the tile's bounds check (DeepFace's
    # 11 x 11 convolution over 3 channels, 142 columns in tiles of 7: AMD EPYC Zen 4, one thread, 9.6 ->
    # 5.1 ms, onnxruntime's Conv 5.3; the whole model 1.21x -> 0.93x onnxruntime's time).
    columns = _whole(ow, tile)
    right += max(0, (columns - 1) * sw + (kw - 1) * dw + 1 - (width + left + right))
    if top or left or bottom or right:
        source = _padded(data, blocks_in, height, width, top, left, height + top + bottom, width + left + right)
    else:
        source = data
    if blocked_in:
        source = _Blocked(source, lanes)
    rc = te.reduce_axis((0, channels), "rc")
    ry = te.reduce_axis((0, kh), "ry")
    rx = te.reduce_axis((0, kw), "rx")
    rows_outer = default["rows_outer"] if rows_outer is None else rows_outer

    def at(n, o, y, x, v):  # acc's axes: (n, y, o, ...) for tasks by rows, else (n, o, y, ...)
        return (n, y, o, x, v) if rows_outer else (n, o, y, x, v)

    def reduce(n, o, y, x, v):
        return te.sum(source[n, rc, y * sh + ry * dh, x * sw + rx * dw] * packed[o, rc, ry, rx, v], axis=[rc, ry, rx])

    acc = te.compute(at(batch, padded // block, oh, columns, block), lambda *i: reduce(*at(*i)), name="acc")

    residual_shape = (batch, out_channels // lanes, oh, ow, lanes) if blocked_residual else (batch, out_channels, oh, ow)
    extra = _epilogue_inputs(epilogue, padded, residual_shape)
    in_registers, as_written = _split_at_residual(epilogue)
    if in_registers:  # on the tile in registers, a vector of channels at a time (the write-back is a transpose)
        acc = te.compute(acc.shape, lambda *i: _apply_epilogue(acc[i], in_registers, extra, at(*i)[1] * block + i[-1]),
                         name="epilogue")
    late = extra[sum(1 for step in in_registers if step[0] == "bias"):]

    def written(n, o, y, x):  # output channel o's element at (y, x), the epilogue's late steps applied
        return _apply_epilogue(acc[at(n, o // block, y, x, o % block)], as_written, late, o,
                               _element(lanes, blocked_residual, n, o, y, x))

    out = _output((batch, out_channels, oh, ow), lanes, blocked_out, written)
    sch = s_tir.Schedule(te.create_prim_func([data, packed, *extra, out]))
    update = _tile_reduction(sch, "acc", "out", parallel=2 if rows_outer else 3, serial=1 if rows_outer else 0,
                             reductions=3, tile=tile, in_registers="epilogue" if in_registers else None,
                             vector_store=blocked_out)
    if unroll_window if unroll_window is not None else (channels <= 4 and kw >= 5):
        # an image's first layer: the window's loop is most of the reduction (ResNet-18's 7x7 over 3
        # channels, AMD EPYC, 148 -> 191-207 GFLOP/s unrolled)
        sch.unroll(sch.get_loops(update)[-3])  # [parallel, row tiles, c, y, x, row, vector]
    if top or left or bottom or right:
        pad = sch.get_sblock("pad")
        if rows_outer:  # each task pads the rows it reads
            sch.compute_at(pad, sch.get_loops(update)[0])
        else:
            loops = sch.get_loops(pad)
            sch.parallel(sch.fuse(loops[0], loops[1]))
    weight = np.pad(weight, ((0, padded - out_channels), (0, 0), (0, 0), (0, 0)))
    weights = weight.reshape(padded // block, block, channels, kh, kw).transpose(0, 2, 3, 4, 1)
    return _finish(sch), np.ascontiguousarray(weights)


_WINOGRAD_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])  # F(2x2, 3x3): U = G g G^T


def winograd_conv2d(data_shape, weight: np.ndarray, padding, lanes: int, epilogue=(), tile: int | None = None,
                    rows_outer: bool | None = None, blocked_in: bool = False, blocked_out: bool = False,
                    blocked_residual: bool = False):
    """(PrimFunc(data, packed weight, *epilogue inputs, out), packed weight) for a 3x3 stride-1
    float32 convolution (groups=1) over whole vectors of input channels, as
    Winograd's F(2x2, 3x3) (Lavin and Gray, 2016): per 2x2 output tile, its 4x4 patch of input
    d becomes V = B^T d B (16 values a channel, adds only), the 16 products M[e] = sum over the
    channels of V[e] x U[e], U = G g G^T the weights transformed at compile time ([O/L, 16, C, L]),
    and the tile is A^T M A (adds only): 16 multiply-adds per channel and 2x2 outputs where the
    direct kernel does 36.

    The parallel tasks are rows of tiles: a task pads its 4 input rows, transforms them for every
    channel (V, in a buffer of its own: 16 x tiles x channels), then per vector of output channels
    runs the products, `tile` tiles x a vector in registers through the channels as in the direct
    kernel, into M (16 x tiles x a vector), the inverse transform into two rows of output tiles,
    and writes those rows with the epilogue applied. The row's tiles are padded to whole `tile`s
    and an odd output's last row and column of tiles to 2x2 (zeros, never written).
    AMD EPYC Zen 4, one thread, alone, against `direct_conv2d` (same process): 256 -> 256 channels
    at 56x56 0.48x the time, 128 at 28x28 0.49x, 64 at 224x224 0.55x; its sums differ from the
    direct kernel's by rounding (about 1e-6 of the output's scale).

    `blocked_in` / `blocked_out` / `blocked_residual` as `direct_conv2d`'s."""
    from tvm import s_tir, te, tirx

    batch, channels, height, width = data_shape
    out_channels = weight.shape[0]
    top, left, bottom, right = padding
    oh, ow = height + top + bottom - 2, width + left + right - 2
    if weight.shape[1:] != (channels, 3, 3) or channels % lanes:
        raise ValueError("Winograd's F(2x2, 3x3) needs a 3x3 window and whole vectors of input channels")
    if (blocked_out or blocked_residual) and out_channels % lanes:
        raise ValueError("a blocked layout needs whole vectors of channels")
    rows, columns = -(-oh // 2), -(-ow // 2)  # of tiles (an odd output's last ones half written)
    tile = tile or _row_tile(columns, 7)
    padded_columns = _whole(columns, tile)
    if rows_outer is None:  # the transformed weights no larger than the transformed input (16 x tiles x channels)
        rows_outer = out_channels <= rows * columns
    padded = _whole_vectors(out_channels, lanes)
    blocks = padded // lanes
    data, blocks_in = _input(data_shape, lanes, blocked_in)
    packed = te.placeholder((blocks, 16, channels, lanes), "float32", name="weight")
    pad = _padded(data, blocks_in, height, width, top, left, 2 * rows + 2, 2 * padded_columns + 2)
    source = _Blocked(pad, lanes) if blocked_in else pad

    def by_rows(x, pick):  # (B^T x)[pick] of a column x(0..3) (B^T = [[1,0,-1,0], [0,1,1,0], [0,-1,1,0], [0,1,0,-1]])
        return tirx.Select(pick == 0, x(0) - x(2), tirx.Select(pick == 1, x(1) + x(2),
                           tirx.Select(pick == 2, x(2) - x(1), x(1) - x(3))))

    def transformed(n, t, e, s, c):  # V[e = 4 xi + nu] of tile (t, s), channel c
        return by_rows(lambda j: by_rows(lambda i: source[n, c, 2 * t + i, 2 * s + j], e // 4), e % 4)

    V = te.compute((batch, rows, 16, padded_columns, channels), transformed, name="V")
    rc = te.reduce_axis((0, channels), "rc")
    acc = te.compute((batch, rows, blocks, 16, padded_columns, lanes),
                     lambda n, t, o, e, s, v: te.sum(V[n, t, e, s, rc] * packed[o, e, rc, v], axis=[rc]), name="acc")
    M = te.compute(acc.shape, lambda *i: acc[i], name="M")

    def inverse(n, t, o, a, s, b, v):  # output (2t + a, 2s + b) of channel o * lanes + v: A^T M A
        def column(nu):  # (A^T M)[a][nu], A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]
            def m(xi):
                return M[n, t, o, 4 * xi + nu, s, v]

            return tirx.Select(a == 0, m(0) + m(1) + m(2), m(1) - m(2) - m(3))

        return tirx.Select(b == 0, column(0) + column(1) + column(2), column(1) - column(2) - column(3))

    Y = te.compute((batch, rows, blocks, 2, columns, 2, lanes), inverse, name="Y")

    residual_shape = (batch, out_channels // lanes, oh, ow, lanes) if blocked_residual else (batch, out_channels, oh, ow)
    extra = _epilogue_inputs(epilogue, padded, residual_shape)

    def written(n, c, y, x):  # output channel c's element at (y, x)
        value = Y[n, y // 2, c // lanes, y % 2, x // 2, x % 2, c % lanes]
        return _apply_epilogue(value, epilogue, extra, c, _element(lanes, blocked_residual, n, c, y, x))

    out = _output((batch, out_channels, oh, ow), lanes, blocked_out, written)
    sch = s_tir.Schedule(te.create_prim_func([data, packed, *extra, out]))
    block = sch.get_sblock("out")
    loops = sch.get_loops(block)
    if blocked_out:
        n, o, y, x, v = loops
        t, a = sch.split(y, [None, 2])
        inner = (a, x, v)
    else:  # NCHW: each channel's two rows written along the row
        n, c, y, x = loops
        o, v = sch.split(c, [None, lanes])
        t, a = sch.split(y, [None, 2])
        inner = (v, a, x)
    sch.reorder(*((n, t, o) if rows_outer else (n, o, t)), *inner)
    at = o if rows_outer else t
    products = sch.get_sblock("M")
    sch.compute_at(sch.get_sblock("Y"), at)
    sch.compute_at(products, at)
    _, to_registers, vector = sch.get_loops(products)[-3:]
    outer, inner = sch.split(to_registers, [None, tile])
    sch.vectorize(vector)
    sch.unroll(inner)
    update = sch.get_sblock("acc")
    sch.compute_at(update, outer)
    x_, lane, k = sch.get_loops(update)[-3:]
    sch.reorder(k, x_, lane)
    sch.set_scope(update, 0, "local")
    sch.vectorize(lane)
    sch.unroll(x_)
    transform = sch.get_sblock("V")
    if rows_outer:  # each task transforms the rows it reads
        sch.compute_at(transform, t)
        sch.compute_at(sch.get_sblock("pad"), t)
    else:  # the whole input transformed first, by rows of tiles; then tasks by channel blocks x rows
        sch.compute_at(sch.get_sblock("pad"), sch.get_loops(transform)[1])
        sch.parallel(sch.fuse(*sch.get_loops(transform)[:2]))
    loops = sch.get_loops(transform)
    sch.unroll(loops[-3])  # the 16 transforms: the selects fold to adds
    sch.vectorize(sch.split(loops[-1], [None, lanes])[1])
    inverse_loops = sch.get_loops(sch.get_sblock("Y"))
    sch.unroll(inverse_loops[-4])  # a
    sch.unroll(inverse_loops[-2])  # b
    sch.vectorize(inverse_loops[-1])
    sch.parallel(sch.fuse(n, t) if rows_outer else sch.fuse(n, o, t))
    init = sch.decompose_reduction(update, k)
    sch.vectorize(sch.get_loops(init)[-1])
    if blocked_out:
        sch.vectorize(v)
    weight = np.pad(weight.astype(np.float64), ((0, padded - out_channels), (0, 0), (0, 0), (0, 0)))
    transformed = np.einsum("ai,ocij,bj->ocab", _WINOGRAD_G, weight, _WINOGRAD_G)  # U = G g G^T, [O, C, 4, 4]
    weights = transformed.reshape(blocks, lanes, channels, 16).transpose(0, 3, 2, 1)  # [O/L, 16, C, L]
    return _finish(sch), np.ascontiguousarray(weights, dtype=np.float32)


class _Blocked:
    """An NCHW{lanes}c placeholder indexed as NCHW: `source[n, c, i, j]`."""

    def __init__(self, data, lanes: int):
        self.data, self.lanes = data, lanes

    def __getitem__(self, index):
        n, c, i, j = index
        return self.data[n, c // self.lanes, i, j, c % self.lanes]


def pointwise_conv2d(data_shape, weight: np.ndarray, lanes: int, epilogue=()):
    """(PrimFunc(data [N, C, H*W], packed weight, *epilogue inputs, out [N, O, H*W]), packed
    weight) for a 1x1 stride-1 unpadded convolution, or None where the positions or channels do
    not tile. The parallel tasks are ranges of positions (up to 32), each computing every output
    channel there: a thread reads the rows of input that the kernel before it wrote in its own
    cache (with one task per block of output channels, each read the whole input; MobileNetV2, Intel
    Xeon, two threads: 32 -> 16 at 112x112 0.35 -> 0.21 ms in the model, 16 -> 96 0.72 -> 0.59).
    Where the input has more channels than the output, a range runs its columns outside the output's
    channel blocks, so that a tile's columns of input, read from every channel, are read from memory
    once and from cache for the other blocks (144 -> 24 at 56x56, one thread, alone: 0.86 -> 0.56
    ms); else the blocks outside, each block's weights staying in cache along the range (16 -> 96
    at 112x112 1.0 ms against 2.0)."""
    from tvm import s_tir, te

    batch, channels, height, width = data_shape
    out_channels = weight.shape[0]
    positions = height * width
    rows, vector = 8, 2 * lanes
    if out_channels % rows or positions % vector:
        return None
    data = te.placeholder((batch, channels, positions), "float32", name="data")
    packed = te.placeholder((out_channels // rows, channels, rows), "float32", name="weight")
    rc = te.reduce_axis((0, channels), "rc")
    blocks, columns = out_channels // rows, positions // vector
    parts = max(d for d in range(1, 33) if columns % d == 0)  # the parallel tasks: ranges of positions
    span = columns // parts

    def reduce(n, o, p, r, v):
        return te.sum(packed[o, rc, r] * data[n, rc, p * vector + v], axis=[rc])

    if channels > out_channels:  # in a range, the columns outer: each read once for every block
        acc = te.compute((batch, parts, span, blocks, rows, vector),
                         lambda n, g, t, o, r, v: reduce(n, o, g * span + t, r, v), name="acc")
        tile = lambda n, o, p: acc[n, p // (span * vector), p // vector % span, o // rows, o % rows, p % vector]  # noqa: E731
    else:  # the blocks outer: each block's weights stay in cache along the range
        acc = te.compute((batch, parts, blocks, span, rows, vector),
                         lambda n, g, o, t, r, v: reduce(n, o, g * span + t, r, v), name="acc")
        tile = lambda n, o, p: acc[n, p // (span * vector), o // rows, p // vector % span, o % rows, p % vector]  # noqa: E731
    extra = _epilogue_inputs(epilogue, out_channels, (batch, out_channels, positions))
    out = te.compute((batch, out_channels, positions),
                     lambda n, o, p: _apply_epilogue(tile(n, o, p), epilogue, extra, o, (n, o, p)), name="out")
    sch = s_tir.Schedule(te.create_prim_func([data, packed, *extra, out]))
    _tile_reduction(sch, "acc", "out", parallel=2, reductions=1, tile=rows, vector_store=True, serial=2)
    weights = weight.reshape(out_channels // rows, rows, channels).transpose(0, 2, 1)
    return _finish(sch), np.ascontiguousarray(weights)


def depthwise_conv2d_nchwc(data_shape, weight: np.ndarray, strides, padding, lanes: int, epilogue=(),
                           tile: int = 7):
    """(PrimFunc(data [N, C/L, H, W, L], packed weight [C/L, KH, KW, L], *epilogue inputs, out
    [N, C/L, OH, OW, L]), packed weight) for a depthwise convolution (groups = channels, one filter
    per channel) in the blocked layout NCHW{L}c, L = `lanes`: the channels are the vector, so the
    padding is a condition on the row and column that is the same for every lane (no padded copy),
    and a tile of `tile` output columns is accumulated in registers over the window. None where the
    channels are not whole vectors.

    Alone on the Intel Xeon VM (rocketlake), MobileNetV2's 17 depthwise 3x3 convolutions with bias and
    ReLU6: 1.36 ms on one thread against 3.13 for the NCHW build (the row the vector, each plane
    copied with its border first), 0.67 against 1.65 on two (docs/bench-speed.txt). The layout is for
    kernels that all work in it (compiler/kernels.py `_blocked_layout`: the convolution before it
    writes it, those after it read it); converting around one kernel would cost two passes over
    memory."""
    from tvm import s_tir, te, tirx

    batch, channels, height, width = data_shape
    _, _, kh, kw = weight.shape
    if channels % lanes or weight.shape[0] != channels or weight.shape[1] != 1:
        return None
    sh, sw = strides
    top, left, _, _ = padding
    oh, ow = _conv_output(data_shape, weight.shape, strides, padding, (1, 1))
    blocks = channels // lanes
    tile = min(tile, ow)
    columns = _whole(ow, tile)  # whole tiles (`at` reads zeros past the row): no bounds check per tile
    data = te.placeholder((batch, blocks, height, width, lanes), "float32", name="data")
    packed = te.placeholder((blocks, kh, kw, lanes), "float32", name="weight")
    ry = te.reduce_axis((0, kh), "ry")
    rx = te.reduce_axis((0, kw), "rx")

    def at(n, b, i, j, v):  # the input element, or the padding's zero
        return tirx.if_then_else(tirx.all(i >= 0, i < height, j >= 0, j < width), data[n, b, i, j, v],
                                 tirx.const(0.0, "float32"))

    acc = te.compute((batch, blocks, oh, columns, lanes),
                     lambda n, b, y, x, v: te.sum(at(n, b, y * sh + ry - top, x * sw + rx - left, v) * packed[b, ry, rx, v],
                                                  axis=[ry, rx]), name="acc")
    extra = _epilogue_inputs(epilogue, channels, (batch, channels, oh, ow))
    if any(step[0] == "residual" for step in epilogue):
        raise ValueError("a residual add after a depthwise convolution is not supported in NCHWc")
    out = te.compute((batch, blocks, oh, ow, lanes),
                     lambda n, b, y, x, v: _apply_epilogue(acc[n, b, y, x, v], epilogue, extra, b * lanes + v),
                     name="out")
    sch = s_tir.Schedule(te.create_prim_func([data, packed, *extra, out]))
    block = sch.get_sblock("acc")
    n, b, y, x, v, wy, wx = sch.get_loops(block)
    x_outer, x_inner = sch.split(x, [None, tile])
    sch.reorder(n, b, y, x_outer, wy, wx, x_inner, v)
    sch.parallel(sch.fuse(n, b, y))
    sch.set_scope(block, 0, "local")
    sch.reverse_compute_at(sch.get_sblock("out"), x_outer)
    sch.unroll(x_inner)
    sch.unroll(wx)
    sch.vectorize(v)
    init = sch.decompose_reduction(block, wy)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.vectorize(sch.get_loops(sch.get_sblock("out"))[-1])
    weights = weight.reshape(blocks, lanes, kh, kw).transpose(0, 2, 3, 1)
    return _finish(sch), np.ascontiguousarray(weights)


def dense(rows: int, weight: np.ndarray, lanes: int, epilogue=(), interleave: bool | None = None):
    """(PrimFunc(a [M, K], packed weight, *epilogue inputs, out [M, N]), packed weight) for a
    [K, N] float32 weight. The columns are padded with zero weights to a whole number of vectors,
    and the padding's outputs are never written: DeepFace's 4030 identities and the ASR net's 1706
    senones, which no block of 4 divides, were left to TVM's untiled matmul (DeepFace's last layer
    took 138 ms of its 161), and 1000 classes ran in half vectors (ResNet-18's fc 96 -> 53 us).

    Each row's reduction is split into up to 4 equal parts (`chains`), whose sums are added in order
    at the end; the parts depend on the depth alone, so that a row gets the same bits alone and in a
    batch. `interleave` (default: up to 8 rows) sums the parts side by side, so that a task reads its
    weights as that many streams: a few rows are bound by reading the weights, and one stream left
    memory idle (Intel Xeon VM, one thread, DeepFace's 24336 x 4096 layer at batch 1 45.4 -> 32.2 ms,
    8.8 -> 12.4 GB/s, onnxruntime's MatMul 39.0 ms; 4096 x 4096 at 1, 2, 4, 8 rows 0.72-0.80x the
    time of one stream). More rows reuse each weight load across a tile of 8 rows, one part after
    the other (at 32 rows interleaving took 1.14x). Either way the tile holds at most 8 accumulators."""
    from tvm import s_tir, te

    depth, columns = weight.shape
    block, padded = lanes, _whole_vectors(columns, lanes)
    chains = max(d for d in range(1, 5) if depth % d == 0)
    part = depth // chains
    if interleave is None:
        interleave = rows <= 8
    tile = _row_tile(rows, 8 // chains if interleave else 8)
    a = te.placeholder((rows, depth), "float32", name="a")
    packed = te.placeholder((padded // block, depth, block), "float32", name="weight")
    rk = te.reduce_axis((0, part), "rk")

    def partial(o, r, v):  # row r // chains's sum over part r % chains of the reduction
        k = r % chains * part + rk
        return te.sum(a[r // chains, k] * packed[o, k, v], axis=[rk])

    acc = te.compute((padded // block, rows * chains, block), partial, name="acc")
    extra = _epilogue_inputs(epilogue, padded, (rows, columns))

    def total(m, n):  # the parts' sums added in order
        return sum((acc[n // block, m * chains + c, n % block] for c in range(1, chains)),
                   acc[n // block, m * chains, n % block])

    out = te.compute((rows, columns), lambda m, n: _apply_epilogue(total(m, n), epilogue, extra, n, (m, n)), name="out")
    sch = s_tir.Schedule(te.create_prim_func([a, packed, *extra, out]))
    update = sch.get_sblock("acc")
    o, r, v, k = sch.get_loops(update)
    m, c = sch.split(r, [rows, chains])
    m_outer, m_inner = sch.split(m, [None, tile])
    if interleave:
        sch.reorder(o, m_outer, k, m_inner, c, v)
    else:
        sch.reorder(o, m_outer, c, k, m_inner, v)
    sch.set_scope(update, 0, "local")
    sch.reverse_compute_at(sch.get_sblock("out"), m_outer)
    sch.parallel(o)
    sch.vectorize(v)
    sch.unroll(m_inner)
    sch.unroll(c)
    init = sch.decompose_reduction(update, k)
    sch.vectorize(sch.get_loops(init)[-1])
    if padded == columns:  # a padded block's last write is partial: scalar stores
        sch.vectorize(sch.get_loops(sch.get_sblock("out"))[-1])
    weight = np.pad(weight, ((0, 0), (0, padded - columns)))
    weights = weight.reshape(depth, padded // block, block).transpose(1, 0, 2)
    return _finish(sch), np.ascontiguousarray(weights)
