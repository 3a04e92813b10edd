"""Fast CPU code without tuning: what a CPU build does on top of TVM's default Relax pipeline.

TVM 0.27 has no rule-based CPU schedules for convolution or matmul, so its untuned output is naive,
single-threaded loops (5-100x slower than onnxruntime). A CPU build here:

1. `lower_products` (Relax, before legalization): the products, convolutions with groups=1 and
   matmuls with a constant right-hand side, are built one of two ways:
   - `kernels="tvm"` (the default): register-tiled TIR kernels of ours (compiler/tiled_kernels.py),
     scheduled where they are made and left alone by fusion and tuning, with the per-channel bias,
     ReLU and Clip that follow them, and a skip connection's add, taken into the kernel
     (`_epilogue_chains`; Clip, which TVM's importer emits as TIR, is first turned back into
     operators by `clamps_as_ops`); a 3x3 stride-1 convolution is Winograd's F(2x2, 3x3), whose
     transformed weights take 16 values per 9; `kernels="tvm-direct"` keeps the direct kernel there,
     for a device where the artifacts' size and the memory they load into matter more than speed;
   - `kernels="blas"`: im2col + GEMM (at batch B, B of them, one per sample), the GEMM an external
     call `neurosurgeon.sgemm` that the runtime serves from numpy's BLAS (runtime/kernels.py). A 1x1
     stride-1 convolution needs no im2col: its input already is the GEMM operand.
   Constant weights are packed / reshaped / transposed here, at compile time.
   With the tiled kernels, every tensor that only convolutions read (as data or as the residual
   they add) is NCHW{lanes}c (`_blocked_layout`): the convolution before it writes it a vector of
   channels at a time, the ones after it read it in place, and a depthwise convolution computes in
   it (tiled_kernels.depthwise_conv2d_nchwc, the padding a condition); what anything else reads
   stays NCHW, so no tensor is converted between layouts.
2. TVM's CPU backend passes: legalize, fold constants, fuse (bias + relu + the next layer's
   padding or pooling into one loop nest), as tvm.compile's generic CPU pipeline does not.
3. `ParallelLoops`, a schedule rule of ours for every fused function MetaSchedule has no record
   for: inline injective producers, parallelise the outer spatial loops over TVM's thread pool,
   vectorise the innermost spatial loop of elementwise blocks, and move the reduction loops of
   windowed reductions (pooling, depthwise convolution) outside a vectorised innermost spatial
   loop where the window moves one element per output, or two where a row has 8 outputs or more
   (a stride-2 window, whose loads `strided_loads_as_shuffles` de-interleaves after lowering: the
   CPU builds' TIR pipeline, `cpu_tir_pipeline`). A padded
   copy of the input is made per outer (channel) iteration, where the reduction reads it, instead
   of being inlined as a border test in its innermost loop. MobileNetV2's four 3x3 depthwise
   convolutions at 14x14x384 took 0.71 ms and now 0.19 (one thread, AMD EPYC Zen 5). A depthwise
   convolution's bias and activation run per row on the sums in registers (`_epilogue_per_row`).
4. Before lowering, `reshape_views`: a reshape of a computed tensor is a view also where it is the
   function's result (a segment's output), which TVM's own pass leaves as a copy.
5. In the TIR pipeline, `small_kernels_serial`: a kernel of a few microseconds (PARALLEL_MIN_WORK)
   runs on the calling thread, not TVM's pool; after lowering, `local_buffers_on_stack`: a task's
   accumulators are on its stack, not taken from TVM's workspace pool at every iteration.
6. Last, `shared_storage_sizes`: the k-th largest storage of every artifact's memory plan has one
   size, so the segments of a chain reuse one set of buffers from TVM's pooled allocator.

`kernels="naive"` is TVM's default pipeline, kept for measuring what each step gains (bench speed
--steps).
"""

from __future__ import annotations

import numpy as np

from ..runtime.kernels import SGEMM

__all__ = ["DEFAULT_KERNELS", "KERNEL_CHOICES", "TILED_WINOGRAD", "count_externs", "count_kernels", "cpu_phases", "cpu_pipeline",
           "cpu_tir_pipeline", "offload_gemm", "parallel_loops_rule", "strided_loads_as_shuffles", "vector_lanes"]

KERNEL_CHOICES = ("tvm", "tvm-direct", "blas", "naive")
DEFAULT_KERNELS = "tvm"
# The choices whose products are our tiled kernels, and whether their 3x3 stride-1 convolutions take
# Winograd's kernel (tiled_kernels.winograd_conv2d).
TILED_WINOGRAD = {"tvm": True, "tvm-direct": False}


# ---------------------------------------------------------------------------------------------
# 1. GEMM offload


def _static_shape(expr) -> tuple[int, ...] | None:
    from tvm import relax

    sinfo = expr.ty
    if not isinstance(sinfo, relax.TensorType) or sinfo.shape is None:
        return None
    try:
        return tuple(int(d) for d in sinfo.shape.values)
    except (TypeError, AttributeError):
        return None


def _im2col_te(data, kernel: tuple[int, int], strides, padding, dilation, out_hw: tuple[int, int]):
    """cols[c, y, x, oy, ox] = padded input[0, c, oy*sh + y*dh, ox*sw + x*dw] (batch 1)."""
    from tvm import te, tirx

    _, channels, height, width = (int(d) for d in data.shape)
    kh, kw = kernel
    sh, sw = strides
    top, left, bottom, right = padding
    dh, dw = dilation
    oh, ow = out_hw
    if any(padding):
        source = te.compute(
            (channels, height + top + bottom, width + left + right),
            lambda c, i, j: tirx.if_then_else(
                tirx.all(i >= top, i < height + top, j >= left, j < width + left),
                data[0, c, i - top, j - left], tirx.const(0.0, data.dtype)),
            name="pad")
    else:
        source = te.compute((channels, height, width), lambda c, i, j: data[0, c, i, j], name="unbatch")
    return te.compute((channels, kh, kw, oh, ow),
                      lambda c, y, x, i, j: source[c, i * sh + y * dh, j * sw + x * dw], name="im2col")


def _geometry(attrs) -> tuple:
    """A convolution's (strides, padding, dilation) as tuples of ints."""
    return (tuple(int(s) for s in attrs.strides), tuple(int(p) for p in attrs.padding),
            tuple(int(d) for d in attrs.dilation))


def _conv2d_weight(call, constant) -> np.ndarray | None:
    """The constant float32 OIHW weight of `call`, a float32 NCHW convolution with static shapes (what
    the tiled kernels build), else None."""
    attrs, (data, weight) = call.attrs, call.args
    if (attrs.data_layout != "NCHW" or attrs.kernel_layout != "OIHW" or attrs.out_layout != "NCHW"
            or str(data.ty.dtype) != "float32" or _static_shape(data) is None or _static_shape(call) is None):
        return None
    value = constant(weight)
    return value if value is not None and value.dtype == np.float32 else None


def _resolve(builder, expr):
    """What `expr` is bound to, following variables through the builder's bindings (or None)."""
    from tvm import relax

    while isinstance(expr, relax.Var):
        expr = builder.lookup_binding(expr)
    return expr


def _constant(builder, expr):
    """The numpy value of `expr` if it is a constant or a variable bound to one, else None."""
    import tvm

    expr = _resolve(builder, expr)
    return expr.value.numpy() if isinstance(expr, tvm.ir.expr.Constant) else None


def _bound_call(builder, expr, op_name: str):
    """The call `expr` is bound to, if it is a call of `op_name`."""
    import tvm
    from tvm import relax

    expr = _resolve(builder, expr)
    if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name == op_name:
        return expr
    return None


class _Products:
    """How a product (a convolution with groups=1, a matmul with a constant right-hand side) is
    built: `conv2d` and `matmul` return the expression that replaces the call, or None to leave it
    to TVM's legalization. Where `fuses_epilogues`, they also take the per-channel operators that
    follow the product (`_epilogue_chains`) as (step, bias or None) pairs and apply them before
    the write-back."""

    blocked_lanes = 0  # the vector width of the NCHW{lanes}c layout these kernels compute in (0: none)

    fuses_epilogues = False

    def conv2d(self, builder, data, kernel: np.ndarray, geometry, out_shape, epilogue=()):
        raise NotImplementedError

    def matmul(self, builder, lhs, weight: np.ndarray, lhs_shape, out_shape, epilogue=()):
        raise NotImplementedError


class _BlasProducts(_Products):
    """im2col + GEMM, the GEMM an external call to the runtime's BLAS (`--kernels blas`)."""

    @staticmethod
    def _sgemm(a, b, out_shape):
        """out = a @ b as the runtime's sgemm sees them: a as [M, K] (its last axis is K), b as
        [K, N] and out as [M, N], whatever their shapes (row-major views, no copies)."""
        from tvm import relax

        return relax.call_dps_packed(SGEMM, [a, b], relax.TensorType(tuple(out_shape), "float32"))

    def conv2d(self, builder, data, kernel, geometry, out_shape, epilogue=()):
        from tvm import relax

        strides, padding, dilation = geometry
        out_channels, channels, kh, kw = kernel.shape
        _, _, oh, ow = out_shape
        weight_2d = relax.const(np.ascontiguousarray(kernel.reshape(out_channels, channels * kh * kw)))
        batch = out_shape[0]
        # A batch is one GEMM per sample, each the batch-1 GEMM: a sample's answer is the same
        # alone or in a batch (the server's dynamic batching), and the weights stay in cache.
        products = []
        for i in range(batch):
            sample = data if batch == 1 else builder.emit(
                relax.op.strided_slice(data, axes=[0], begin=[i], end=[i + 1]))
            if (kh, kw) == (1, 1) and strides == (1, 1) and not any(padding):
                cols = sample  # [1, C, H, W] is the [C, H*W] operand already
            else:
                cols = builder.emit_te(_im2col_te, sample, (kh, kw), strides, padding, dilation, (oh, ow),
                                       primfunc_name_hint="im2col")
            products.append(self._sgemm(weight_2d, cols, (1, *out_shape[1:])))
        if batch == 1:
            return products[0]
        return relax.op.concat([builder.emit(p) for p in products], axis=0)

    def matmul(self, builder, lhs, weight, lhs_shape, out_shape, epilogue=()):
        from tvm import relax

        return self._sgemm(lhs, relax.const(np.ascontiguousarray(weight)), out_shape)


class _TiledProducts(_Products):
    """Register-tiled TIR kernels (compiler/tiled_kernels.py) on TVM's thread pool (`--kernels tvm`),
    with the per-channel bias and activation that follow them applied before the write-back."""

    fuses_epilogues = True

    def __init__(self, lanes: int, tiles=None, winograd: bool = True):
        from .tiled_kernels import TileChoices

        self.lanes = self.blocked_lanes = lanes
        self.tiles = tiles if tiles is not None else TileChoices()  # tuning's choices, and what was asked
        self.winograd = winograd

    @staticmethod
    def _call(builder, kernel, name: str, args, epilogue, out_shape, flat: bool = False):
        """The call of `kernel` on `args`, its packed weight and the epilogue's operands in order: the
        biases (constants) and the residuals (reshaped to `out_shape` where the kernel's output is
        `flat`: a reshape of the convolution's or matmul's)."""
        from tvm import relax

        from .tiled_kernels import padded_bias

        func, packed = kernel
        def operand_of(step, operand):
            if step[0] == "bias":
                return relax.const(padded_bias(operand, packed))
            return operand if not flat or _static_shape(operand) == tuple(out_shape) else builder.emit(
                relax.op.reshape(operand, tuple(out_shape)))

        operands = [operand_of(step, operand) for step, operand in epilogue if step[0] in ("bias", "residual")]
        gvar = builder.add_func(func, name)
        return relax.call_tir(gvar, [*args, relax.const(packed), *operands], relax.TensorType(tuple(out_shape), "float32"))

    def depthwise(self, builder, data, kernel, geometry, data_shape, out_shape, epilogue=()):
        """A depthwise convolution in NCHW{lanes}c, in and out (`_blocked_layout`)."""
        from .tiled_kernels import depthwise_conv2d_nchwc

        strides, padding, _ = geometry
        tiled = depthwise_conv2d_nchwc(data_shape, kernel, strides, padding, self.lanes,
                                       tuple(step for step, _ in epilogue))
        n, c, oh, ow = out_shape
        return self._call(builder, tiled, "depthwise_nchwc", [data], epilogue, (n, c // self.lanes, oh, ow, self.lanes))

    def conv2d(self, builder, data, kernel, geometry, out_shape, epilogue=(), data_shape=None, **layouts):
        """`layouts`: which of the data, the output and the residual are NCHW{lanes}c (`_blocked_layout`:
        blocked_in, blocked_out, blocked_residual)."""
        from tvm import relax

        from .tiled_kernels import conv_kernel

        data_shape = data_shape or _static_shape(data)
        choice = self.tiles.for_conv(data_shape, kernel.shape, *geometry, self.lanes, self.winograd, **layouts)
        kind, tiled = conv_kernel(data_shape, kernel, *geometry, self.lanes, tuple(step for step, _ in epilogue), choice,
                                  self.winograd, **layouts)
        if kind == "pointwise":
            batch, channels, height, width = data_shape
            flat_shape = (batch, kernel.shape[0], height * width)
            flat = builder.emit(relax.op.reshape(data, (batch, channels, height * width)))
            product = builder.emit(self._call(builder, tiled, "conv2d_pointwise", [flat], epilogue, flat_shape,
                                              flat=True))
            return relax.op.reshape(product, out_shape)
        n, c, oh, ow = out_shape
        shape = (n, c // self.lanes, oh, ow, self.lanes) if layouts.get("blocked_out") else out_shape
        return self._call(builder, tiled, f"conv2d_{kind}", [data], epilogue, shape)

    def matmul(self, builder, lhs, weight, lhs_shape, out_shape, epilogue=()):
        from tvm import relax

        from .tiled_kernels import dense

        rows = int(np.prod(lhs_shape[:-1]))
        tiled = dense(rows, weight, self.lanes, tuple(step for step, _ in epilogue))
        if tiled is None:
            return None
        flat_shape = (rows, weight.shape[1])
        flat = lhs if len(lhs_shape) == 2 else builder.emit(relax.op.reshape(lhs, (rows, lhs_shape[-1])))
        product = self._call(builder, tiled, "dense", [flat], epilogue, flat_shape, flat=True)
        return product if len(out_shape) == 2 else relax.op.reshape(builder.emit(product), out_shape)


def _epilogue_step(binding, var, channels: int, out_shape, constant):
    """(step, operand or None) if `binding` applies to `var` one step that a tiled kernel can take
    before its write-back: the add of a bias, relu, max/min with a scalar (ONNX's Clip), or the add
    of a tensor of the output's shape (a skip connection: ResNet's and MobileNetV2's residual add,
    whose operand is that tensor). Else None."""
    import tvm
    from tvm import relax

    call = binding.value
    if not isinstance(call, relax.Call) or not isinstance(call.op, tvm.ir.Op):
        return None
    name, args = call.op.name, list(call.args)
    if name == "relax.nn.relu" and args[0].same_as(var):
        return ("relu",), None
    if name not in ("relax.add", "relax.maximum", "relax.minimum") or len(args) != 2:
        return None
    if args[1].same_as(var):
        args.reverse()
    if not args[0].same_as(var):
        return None
    value = constant(args[1])
    if value is None:
        other = _static_shape(args[1])
        if (name == "relax.add" and other == tuple(out_shape) and isinstance(args[1], relax.Var)
                and str(args[1].ty.dtype) == "float32"):
            return ("residual",), args[1]
        return None
    if value.dtype != np.float32:
        return None
    if name == "relax.add":
        expected = [1] * len(out_shape)  # broadcast along everything but the channels
        expected[1 if len(out_shape) == 4 else -1] = channels  # conv2d: NCHW; matmul: the last axis
        per_channel = value.ndim <= len(out_shape) and tuple(value.shape) == tuple(expected[len(out_shape) - value.ndim:])
        return (("bias",), value.reshape(channels)) if per_channel else None
    if value.size == 1:
        return ("max" if name == "relax.maximum" else "min", float(value.reshape(()))), None
    return None


def _use_counts(func):
    """How many times each var of `func` is used (a collections.Counter)."""
    import collections

    from tvm import relax

    @relax.expr_functor.visitor
    class _Uses(relax.PyExprVisitor):
        def __init__(self):
            super().__init__()
            self.count = collections.Counter()

        def visit_var_(self, var):
            self.count[var] += 1

        def visit_dataflow_var_(self, var):
            self.count[var] += 1

    uses = _Uses()
    uses.visit_expr(func)
    return uses.count


def _blocked_layout(func, uses, chains, lanes: int, constant) -> tuple[set, set]:
    """(the vars of `func` held in NCHW{lanes}c, the bindings computed in it that follow their data's
    layout: depthwise convolutions, max poolings, concatenations of channels). `uses`:
    `_use_counts(func)`; `chains`: its `_epilogue_chains`.

    A convolution's result (its epilogue chain's last var) is blocked where the convolution can write
    it so (`tiled_kernels.direct_conv2d`: groups=1, whole vectors of output channels) and every use of
    it can read it so: the data of a convolution with groups=1 and whole vectors of input channels,
    the operand of a convolution's residual add, the data of a global average pooling (its result
    [N, C/lanes, 1, 1, lanes] is NCHW's [N, C, 1, 1] in memory), or the data of a follower computed
    blocked. A follower (a depthwise convolution, `tiled_kernels.depthwise_conv2d_nchwc`, a max
    pooling, or a concatenation of channels that fill whole vectors: GoogLeNet's branches) is computed
    blocked where all its data and its result are, else in NCHW as TVM builds it; dropping one makes
    its data and result NCHW, so the sets shrink to a fixed point. What anything else reads (a
    windowed average pooling, a reshape, a segment's output) stays NCHW, and so do the function's
    inputs, so that no tensor is converted between layouts: ResNet-18 and MobileNetV2 compute in
    NCHW16c from their first convolution to their global pooling (MobileNetV2 but for its 24-channel
    tensors), GoogLeNet through its inception blocks, VGG-16 and AlexNet from their first
    convolution to the one before their last pooling."""
    import collections

    import tvm
    from tvm import relax

    conv, pool, concat = (tvm.ir.Op.get(f"relax.{name}") for name in ("nn.conv2d", "nn.max_pool2d", "concat"))
    last_of = {chain[0].var: last for last, (chain, _) in chains.items()}
    residuals_of = {chain[0].var: [operand for step, operand in steps if step[0] == "residual"]
                    for chain, steps in chains.values()}

    def shaped(b) -> bool:
        return _static_shape(b.var) is not None and all(
            isinstance(data, relax.Var) and str(data.ty.dtype) == "float32" and _static_shape(data) is not None
            and len(_static_shape(data)) == 4 for data in _data_of(b))

    dense, followers, sinks = [], set(), []
    for b in (b for block in func.body.blocks for b in block.bindings if isinstance(b, relax.VarBinding)
              and isinstance(b.value, relax.Call) and shaped(b)):
        attrs, channels = b.value.attrs, _static_shape(_data_of(b)[0])[1]
        if _global_mean(b.value):
            sinks.append(b)
        elif b.value.op.same_as(concat):
            if int(attrs.axis) in (1, -3) and all(_static_shape(data)[1] % lanes == 0 for data in _data_of(b)):
                followers.add(b)
        elif b.value.op.same_as(pool):
            if attrs.layout == "NCHW" and attrs.out_layout == "NCHW" and channels % lanes == 0:
                followers.add(b)
        elif not b.value.op.same_as(conv) or _conv2d_weight(b.value, constant) is None:
            continue
        elif int(attrs.groups) == 1:
            dense.append(b)
        elif (int(attrs.groups) == channels and channels % lanes == 0 and all(int(v) == 1 for v in attrs.dilation)
              and constant(b.value.args[1]).shape[:2] == (channels, 1) and not residuals_of.get(b.var)):
            followers.add(b)
    result = {b.var: last_of.get(b.var, b.var) for b in [*dense, *followers]}
    blocked = {result[b.var] for b in dense if _static_shape(b.var)[1] % lanes == 0}
    blocked |= {result[f.var] for f in followers}
    while True:
        readers = collections.Counter(data for f in followers for data in _data_of(f))
        readers.update(s.value.args[0] for s in sinks)
        for b in dense:
            if _static_shape(b.value.args[0])[1] % lanes == 0:
                readers[b.value.args[0]] += 1
            readers.update(residuals_of.get(b.var, ()))
        kept = {var for var in blocked if readers[var] == uses[var]}
        dropped = {f for f in followers if not kept.issuperset(_data_of(f)) or result[f.var] not in kept}
        if kept == blocked and not dropped:
            return blocked, {f.var for f in followers}
        followers -= dropped
        blocked = kept - {result[f.var] for f in dropped}


def _data_of(binding) -> list:
    """The tensors a call reads as data: its first argument, or a concatenation's operands."""
    from tvm import relax

    data = binding.value.args[0]
    return list(data.fields) if isinstance(data, relax.Tuple) else [data]


def _global_mean(call) -> bool:
    """Whether `call` is a global average pooling: the mean over the rows and columns of NCHW data,
    dimensions kept (ONNX GlobalAveragePool as Relax imports it)."""
    import tvm

    return (call.op.same_as(tvm.ir.Op.get("relax.mean")) and bool(call.attrs.keepdims) and call.attrs.axis is not None
            and sorted(int(a) % 4 for a in call.attrs.axis) == [2, 3])


def _epilogue_chains(func, uses, constant) -> dict:
    """{last var: ([product binding, step bindings...], [(step, operand)...])} for every product
    (conv2d, matmul) of `func` followed by elementwise steps (`_epilogue_step`), each result used
    only by the next step (`uses`: `_use_counts(func)`)."""
    import tvm
    from tvm import relax

    chains, claimed = {}, set()
    for block in func.body.blocks:
        bindings = list(block.bindings)
        user = {}
        for binding in bindings:
            if isinstance(binding, relax.VarBinding) and isinstance(binding.value, relax.Call):
                for arg in binding.value.args:
                    if isinstance(arg, relax.Var):
                        user.setdefault(arg, binding)
        for binding in bindings:
            call = binding.value
            if not (isinstance(binding, relax.VarBinding) and isinstance(call, relax.Call)
                    and isinstance(call.op, tvm.ir.Op) and call.op.name in ("relax.nn.conv2d", "relax.matmul")):
                continue
            out_shape = _static_shape(binding.var)
            if out_shape is None or len(out_shape) < 2:
                continue
            channels = out_shape[1] if call.op.name == "relax.nn.conv2d" else out_shape[-1]
            chain, steps, var = [binding], [], binding.var
            while uses[var] == 1 and isinstance(var, relax.DataflowVar) and var in user:
                if user[var].var in claimed:  # the add of two products' results: taken by the first
                    break
                step = _epilogue_step(user[var], var, channels, out_shape, constant)
                if step is None or (step[0] == ("residual",) and any(s[0] == ("residual",) for s in steps)):
                    break
                chain.append(user[var])
                steps.append(step)
                var = user[var].var
            if steps:
                chains[var] = (chain, steps)
                claimed.update(link.var for link in chain[1:])
    return chains


def lower_products(products: _Products):
    """The Relax pass of step 1: every float32 convolution with groups=1 (NCHW, constant OIHW
    weights) and every matmul with a constant right-hand side, as `products` builds them."""
    import tvm
    from tvm import relax

    @relax.expr_functor.mutator
    class _Lower(relax.PyExprMutator):
        def __init__(self, mod):
            super().__init__(mod)
            self.conv2d = tvm.ir.Op.get("relax.nn.conv2d")
            self.matmul = tvm.ir.Op.get("relax.matmul")
            self.concat = tvm.ir.Op.get("relax.concat")
            self.chains = {}  # the function's epilogue chains (_epilogue_chains), by their last var
            self.inside = set()  # the vars a chain computes before its last
            self.blocked, self.followers = set(), set()  # _blocked_layout's

        def visit_var_binding_(self, binding):
            if binding.var in self.inside:
                return  # emitted with its chain's last binding
            if (isinstance(binding.value, relax.Call) and binding.value.args
                    and binding.value.args[0] in self.blocked and _global_mean(binding.value)):
                # [N, C/lanes, 1, 1, lanes] is [N, C, 1, 1] in memory: the reshape is a view
                mean = self.builder_.emit(relax.op.mean(self.visit_expr(binding.value.args[0]), [2, 3], keepdims=True))
                reshaped = relax.op.reshape(mean, _static_shape(binding.var))
                self.builder_.emit_normalized(relax.VarBinding(binding.var, self.builder_.normalize(reshaped)))
                return None
            chain, steps = self.chains[binding.var] if binding.var in self.chains else ([binding], [])
            layouts = self._layouts(chain[0], binding.var, steps)
            if chain[0].var in self.followers or any(layouts.values()):
                call = self._blocked(chain[0], steps, layouts)
                if binding.var in self.blocked:  # its type changes: a new var, which its uses take
                    self.set_var_remap(binding.var, self.builder_.emit(call))
                else:
                    self.builder_.emit_normalized(relax.VarBinding(binding.var, self.builder_.normalize(call)))
                return None
            if binding.var not in self.chains:
                return super().visit_var_binding_(binding)
            steps = [(step, self.visit_expr(operand) if step[0] == "residual" else operand) for step, operand in steps]
            head = chain[0].value
            call = self.builder_.normalize(relax.Call(head.op, [self.visit_expr(a) for a in head.args], head.attrs,
                                                      head.ty_args))
            fused = self._conv2d(call, steps) if head.op.same_as(self.conv2d) else self._matmul(call, steps)
            if fused is None:  # not a tiled kernel after all: the chain as it was
                for link in chain:
                    super().visit_var_binding_(link)
                return None
            self.builder_.emit_normalized(relax.VarBinding(binding.var, self.builder_.normalize(fused)))
            return None

        def visit_call_(self, call):
            call = super().visit_call_(call)
            if not isinstance(call.op, tvm.ir.Op):
                return call
            rewritten = None
            if call.op.same_as(self.conv2d):
                rewritten = self._conv2d(call)
            elif call.op.same_as(self.matmul):
                rewritten = self._matmul(call)
            return call if rewritten is None else rewritten

        def _layouts(self, head, last, steps) -> dict:
            """Which of a convolution's data, result (`last`, its chain's) and residual are NCHW{lanes}c."""
            if not (isinstance(head.value, relax.Call) and head.value.op.same_as(self.conv2d)):
                return {}
            return {"blocked_in": head.value.args[0] in self.blocked, "blocked_out": last in self.blocked,
                    "blocked_residual": any(step[0] == "residual" and operand in self.blocked for step, operand in steps)}

        def _blocked(self, head, steps, layouts):
            """A chain that reads, writes or adds NCHW{lanes}c (`_blocked_layout`): a convolution, its
            epilogue applied, or a max pooling or a concatenation in it."""
            call, lanes = head.value, products.blocked_lanes
            data = self.visit_expr(call.args[0])
            if call.op.same_as(self.concat):  # whole blocks of channels: axis 1 of NCHW{lanes}c
                return relax.op.concat(data, axis=1)
            if not call.op.same_as(self.conv2d):
                attrs = call.attrs
                return relax.op.nn.max_pool2d(data, attrs.pool_size, attrs.strides, attrs.padding, attrs.dilation,
                                              attrs.ceil_mode, attrs.count_include_pad, f"NCHW{lanes}c",
                                              f"NCHW{lanes}c")
            steps = [(step, self.visit_expr(operand) if step[0] == "residual" else operand) for step, operand in steps]
            geometry = _geometry(call.attrs)
            kernel, data_shape, out_shape = _constant(self, call.args[1]), _static_shape(call.args[0]), _static_shape(head.var)
            if head.var in self.followers:
                return products.depthwise(self.builder_, data, kernel, geometry, data_shape, out_shape, steps)
            return products.conv2d(self.builder_, data, kernel, geometry, out_shape, steps, data_shape=data_shape,
                                   **layouts)

        def _conv2d(self, call, epilogue=()):
            kernel = _conv2d_weight(call, lambda expr: _constant(self, expr))
            if kernel is None or int(call.attrs.groups) != 1:
                return None
            return products.conv2d(self.builder_, call.args[0], kernel, _geometry(call.attrs), _static_shape(call),
                                   epilogue)

        def _matmul(self, call, epilogue=()):
            lhs, rhs = call.args
            lhs_shape, out_shape = _static_shape(lhs), _static_shape(call)
            if lhs_shape is None or out_shape is None or str(lhs.ty.dtype) != "float32":
                return None
            weight = _constant(self, rhs)
            if weight is None:  # Gemm with transB: permute_dims of a constant, folded here
                permuted = _bound_call(self, rhs, "relax.permute_dims")
                if permuted is None:
                    return None
                source = _constant(self, permuted.args[0])
                if source is None or source.ndim != 2:
                    return None
                axes = permuted.attrs.axes
                weight = source.T if axes is None or [int(a) for a in axes] == [1, 0] else source
            if weight.ndim != 2 or weight.dtype != np.float32 or str(call.attrs.out_dtype or "") not in ("", "float32", "void", "None"):
                return None
            if lhs_shape[-1] != weight.shape[0]:
                return None
            return products.matmul(self.builder_, lhs, weight, lhs_shape, out_shape, epilogue)

    @tvm.transform.module_pass(opt_level=0, name="NeurosurgeonLowerProducts")
    def lower(mod, _ctx):
        rewriter = _Lower(mod)
        for gvar, func in list(mod.functions.items()):
            if isinstance(func, relax.Function):
                uses, constant = _use_counts(func), lambda expr: _constant(rewriter, expr)
                if products.fuses_epilogues:
                    rewriter.chains = _epilogue_chains(func, uses, constant)
                    rewriter.inside = {link.var for chain, _ in rewriter.chains.values() for link in chain[:-1]}
                if products.blocked_lanes:
                    rewriter.blocked, rewriter.followers = _blocked_layout(func, uses, rewriter.chains,
                                                                           products.blocked_lanes, constant)
                rewriter.builder_.update_func(gvar, rewriter.visit_expr(func))
        return relax.transform.DeadCodeElimination()(rewriter.builder_.get())

    return lower


def offload_gemm():
    """Step 1 with `--kernels blas`: products as im2col + the runtime's BLAS GEMM."""
    return lower_products(_BlasProducts())


def _clamp_kind(func) -> str | None:
    """"max" or "min" where the PrimFunc `func` is out = max(x, c) (or min) elementwise over x with a
    0-d c: what TVM's ONNX importer emits for Clip (as TIR, through emit_te), else None."""
    from tvm import s_tir, tirx

    if not isinstance(func, tirx.PrimFunc) or len(func.params) != 3:
        return None
    x, c, out = func.params
    if len(c.shape) != 0 or [int(d) for d in x.shape] != [int(d) for d in out.shape]:
        return None
    sch = s_tir.Schedule(func)
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    if len(blocks) != 1:
        return None
    block = sch.get(blocks[0])
    store, axes = block.body, [iv.var for iv in block.iter_vars]
    kind = {tirx.Max: "max", tirx.Min: "min"}.get(type(getattr(store, "value", None)))
    if kind is None or not isinstance(store, tirx.BufferStore):
        return None

    def at(tensor, indices, expected, place):
        return (tensor.same_as(expected) and len(indices) == len(place)
                and all(i.same_as(j) for i, j in zip(indices, place)))

    def reads(expr, tensor, place):
        return hasattr(expr, "source") and at(expr.source, expr.indices, tensor, place)

    a, b = store.value.a, store.value.b
    if reads(a, c, []):
        a, b = b, a
    return kind if at(store.buffer, store.indices, out, axes) and reads(a, x, axes) and reads(b, c, []) else None


def _call_tir_pass(name: str, rewrite, clean: bool = False):
    """A Relax module pass offering every call_tir of a PrimFunc to `rewrite(call, callee, args,
    params)` (args: the call's argument tuple's fields; params: the enclosing function's), which
    returns its replacement or None to keep it. `clean`: drop what is left unused afterwards."""
    import tvm
    from tvm import relax, tirx

    call_tir = tvm.ir.Op.get("relax.call_tir")

    @relax.expr_functor.mutator
    class _Rewriter(relax.PyExprMutator):
        def __init__(self, mod):
            super().__init__(mod)
            self.mod = mod
            self.params = set()

        def visit_call_(self, call):
            call = super().visit_call_(call)
            if not call.op.same_as(call_tir) or not isinstance(call.args[1], relax.Tuple):
                return call
            callee = self.mod[call.args[0]] if call.args[0] in self.mod.functions else None
            if not isinstance(callee, tirx.PrimFunc):
                return call
            replacement = rewrite(call, callee, list(call.args[1].fields), self.params)
            return call if replacement is None else replacement

    @tvm.transform.module_pass(opt_level=0, name=name)
    def apply(mod, _ctx):
        mutator = _Rewriter(mod)
        for gvar, func in list(mod.functions.items()):
            if isinstance(func, relax.Function):
                mutator.params = set(func.params)
                mutator.builder_.update_func(gvar, mutator.visit_expr(func))
        out = mutator.builder_.get()
        return relax.transform.DeadCodeElimination()(out) if clean else out

    return apply


def clamps_as_ops():
    """A Relax pass: Clip's max and min as Relax operators (relax.maximum / relax.minimum) where the
    importer emitted them as TIR (`_clamp_kind`), so a product's epilogue can take them
    (`_epilogue_chains`): MobileNetV2's ReLU6 after each of its convolutions."""
    import tvm
    from tvm import relax

    ops = {"max": tvm.ir.Op.get("relax.maximum"), "min": tvm.ir.Op.get("relax.minimum")}

    kinds = {}  # by callee: a PrimFunc is inspected once, however many calls it has

    def rewrite(_call, callee, args, _params):
        if callee not in kinds:
            kinds[callee] = _clamp_kind(callee)
        return relax.Call(ops[kinds[callee]], args) if kinds[callee] is not None and len(args) == 2 else None

    return _call_tir_pass("NeurosurgeonClampsAsOps", rewrite, clean=True)


def reshape_views():
    """A Relax pass (after fusion): a reshape of a tensor the function computed becomes a view
    (relax.reshape, run as vm.builtin.reshape) also where it is the function's result. TVM's
    RewriteDataflowReshape leaves those as copy kernels, so a segment ending in a 1x1 convolution
    (whose tiled kernel computes [N, C, H*W]) copied its whole output once more: six such segments of
    MobileNetV2 spent 2.2 ms of a 26 ms chain on it (Intel Xeon, one thread). Safe for a result:
    static memory planning gives a reshape its input's storage, and never plans the storage a
    result uses. A reshape of a parameter keeps its copy (a result must not alias an input)."""
    from tvm import relax

    def rewrite(call, callee, args, params):
        if len(args) != 1 or not isinstance(args[0], relax.Var) or args[0] in params:
            return None
        source, result = _static_shape(args[0]), _static_shape(call)
        if (source is None or result is None or int(np.prod(source)) != int(np.prod(result))
                or str(args[0].ty.dtype) != str(call.ty.dtype) or not relax.analysis.has_reshape_pattern(callee)):
            return None
        return relax.op.reshape(args[0], result)

    return _call_tir_pass("NeurosurgeonReshapeViews", rewrite)


SHARED_STORAGE_MIN = 64 << 10  # bytes: planned storages from this size up get shared sizes
SHARED_STORAGE_FLOOR = 16 << 20  # bytes: the least size a function's largest planned storage gets


def shared_storage_sizes(smallest: int = SHARED_STORAGE_MIN, floor: int = SHARED_STORAGE_FLOOR):
    """A Relax pass (last, CPU builds): the storages that static memory planning allocates, from
    `smallest` bytes up, get sizes that every artifact shares, so that a chain of segments reuses one
    set of buffers.

    TVM's pooled allocator, which every VM of a process shares, hands a freed buffer only to a
    request of exactly its size, and each segment's plan has sizes of its own: MobileNetV2's seven
    segments held 13.7 MiB of buffers where its monolithic build plans 8.2, evicting each other's
    data from the caches (its first segment ran 0.3 ms slower in the chain than alone). Here a
    function's largest storage is allocated as C bytes, its second largest as C plus a page, and so
    on, C the power of two at or above the largest and at least `floor`: the k-th largest storage of
    every segment (of every segment whose storages are under `floor`: all the zoo's at batch 1) takes
    the buffer the segment before it freed, always the same one (a size is one buffer's), so a
    process holds, per rank, the largest storage of that rank. The rest of a buffer is address space
    never touched, so never resident (pages are mapped on first touch). Same process,
    AMD EPYC Zen 4: MobileNetV2's chain went from 1.05-1.08x its monolithic build to 1.01-1.03x (one
    thread); sizes rounded to powers of two got half of that, one size for every storage all of it
    but 15 MiB more resident (buffers changed roles from call to call); peak memory (bench memory)
    moved by 0-8 MiB."""
    import tvm
    from tvm import relax

    alloc_storage = tvm.ir.Op.get("relax.vm.alloc_storage")
    page = 4096

    def planned_bytes(call) -> int | None:
        if not call.op.same_as(alloc_storage) or not isinstance(call.args[0], relax.ShapeExpr):
            return None
        (size,) = call.args[0].values  # a storage's shape is its bytes
        return int(size) if isinstance(size, tvm.tirx.IntImm) and int(size) >= smallest else None

    @relax.expr_functor.visitor
    class _Storages(relax.PyExprVisitor):
        def __init__(self):
            super().__init__()
            self.sizes = []

        def visit_call_(self, call):
            super().visit_call_(call)
            size = planned_bytes(call)
            if size is not None:
                self.sizes.append(size)

    @relax.expr_functor.mutator
    class _Sizes(relax.PyExprMutator):
        def __init__(self, mod):
            super().__init__(mod)
            self.shared: dict[int, list[int]] = {}  # planned size -> its shared sizes, largest first

        def visit_call_(self, call):
            call = super().visit_call_(call)
            size = planned_bytes(call)
            if size is None:
                return call
            shared = self.shared[size].pop(0)
            return relax.Call(call.op, [relax.ShapeExpr([shared]), *call.args[1:]], call.attrs, call.ty_args)

    @tvm.transform.module_pass(opt_level=0, name="NeurosurgeonSharedStorageSizes")
    def apply(mod, _ctx):
        mutator = _Sizes(mod)
        for gvar, func in list(mod.functions.items()):
            if not isinstance(func, relax.Function):
                continue
            storages = _Storages()
            storages.visit_expr(func)
            ranked = sorted(storages.sizes, reverse=True)
            if not ranked:
                continue
            base = max(floor, 1 << (ranked[0] - 1).bit_length())
            mutator.shared = {}
            for rank, size in enumerate(ranked):
                mutator.shared.setdefault(size, []).append(base + rank * page)
            mutator.builder_.update_func(gvar, mutator.visit_expr(func))
        return mutator.builder_.get()

    return apply


def tiled_products(target, tiles=None, winograd: bool = True):
    """Step 1 with `--kernels tvm` (or tvm-direct: `winograd` False): products as register-tiled TIR
    kernels for `target`'s vectors, with the tile choices of `tiles` (a tiled_kernels.TileChoices;
    None: the defaults)."""
    return lower_products(_TiledProducts(vector_lanes(target), tiles, winograd))


# ---------------------------------------------------------------------------------------------
# 3. Schedules for what is left


def vector_lanes(target) -> int:
    """float32 lanes of the target's widest vector unit: 16 where LLVM says its CPU (mcpu, mattr) has
    AVX-512, 4 on Arm (NEON), else 8 (AVX2). LLVM's own answer, not a list of CPU names: a list
    missed rocketlake (Intel Xeon VMs report it), which then got AVX2 tiles at half the width."""
    from tvm.target import codegen

    triple = str(target.attrs.get("mtriple", "")) if "mtriple" in target.attrs else ""
    if triple.startswith("aarch64") or triple.startswith("arm"):
        return 4
    return 16 if codegen.target_has_features("avx512f", target) else 8


def parallel_loops_rule(threads_hint: int = 8):
    """Step 3's schedule rule (a dlight ScheduleRule)."""
    from tvm import s_tir, tirx
    from tvm.s_tir.dlight.analysis import normalize_prim_func  # loops one-to-one with block iterators
    from tvm.s_tir.dlight.base import ScheduleRule

    class ParallelLoops(ScheduleRule):
        def apply(self, func, target, _tunable):
            if not isinstance(func, tirx.PrimFunc):
                return None
            sch = s_tir.Schedule(func)
            pads = _padding_blocks(sch)
            _inline_producers(sch, keep=pads)
            lanes = vector_lanes(target)
            infos = normalize_prim_func(sch)  # loops one-to-one with block iterators, or None
            if infos is None:
                return None
            for info in infos:
                if str(sch.get(info.block_rv).name_hint) in pads:
                    continue
                try:
                    _schedule_block(sch, info.block_rv, [it.kind == "S" for it in info.iters], lanes, threads_hint)
                except Exception:  # noqa: BLE001,S112 - a block this rule cannot improve keeps its loops
                    continue
            for name in pads:
                _pad_where_used(sch, sch.get_sblock(name), lanes)
            return sch

        def is_target_available(self, target) -> bool:
            return target.kind.name == "llvm"

    return ParallelLoops()


def _is_reduction(sch, block) -> bool:
    return any(int(v.iter_type) != 0 for v in sch.get(block).iter_vars)


def _padding_blocks(sch) -> set[str]:
    """Injective blocks that copy an input with a border (a value chosen by if_then_else) for a
    reduction to read: a windowed reduction (depthwise convolution, pooling) that reads its input
    through the condition cannot vectorise, so the padded copy is kept and made per outer loop
    iteration instead (`_pad_where_used`)."""
    import tvm

    if_then_else = tvm.ir.Op.get("prim.if_then_else")
    pads = set()
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        stmt = sch.get(block)
        value = getattr(stmt.body, "value", None)
        if (_is_reduction(sch, block) or not isinstance(value, tvm.ir.expr.Call) or not value.op.same_as(if_then_else)):
            continue
        consumers = sch.get_consumers(block)
        if len(consumers) == 1 and _is_reduction(sch, consumers[0]):
            pads.add(str(stmt.name_hint))
    return pads


def _pad_where_used(sch, pad, lanes: int) -> None:
    """Compute a padding block under its consumer's outermost (parallel) loop: each iteration pads
    the plane it reads, which stays in cache."""
    consumer = sch.get_consumers(pad)[0]
    try:
        sch.compute_at(pad, sch.get_loops(consumer)[0])
    except Exception:  # noqa: BLE001 - the consumer's loops do not allow it: the pad keeps its loops
        return
    loops = sch.get_loops(pad)
    if len(loops) > 1:
        _vectorize(sch, loops[-1], lanes)


def _inline_producers(sch, keep: set[str] = frozenset()) -> None:
    """Inline every injective block (but those named in `keep`) into its consumers (or into its
    producer) where TVM allows it."""
    changed = True
    while changed:
        changed = False
        blocks = sch.get_child_blocks(sch.get_sblock("root"))
        if len(blocks) <= 1:
            return
        outputs = {str(sch.get(b).name_hint) for b in sch.get_output_blocks(sch.get_sblock("root"))}
        for block in blocks:
            stmt = sch.get(block)
            if _is_reduction(sch, block) or stmt.name_hint in outputs | keep:
                continue
            try:
                sch.compute_inline(block)
                changed = True
                break
            except Exception:  # noqa: BLE001,S112 - not inlinable (e.g. read by a reduction's init)
                continue
        if changed:
            continue
        for block in blocks:
            stmt = sch.get(block)
            if _is_reduction(sch, block) or stmt.name_hint not in outputs:
                continue
            try:
                sch.reverse_compute_inline(block)
                changed = True
                break
            except Exception:  # noqa: BLE001,S112 - not inlinable
                continue


def _extent(sch, loop) -> int | None:
    try:
        return int(sch.get(loop).extent)
    except TypeError:
        return None


def _schedule_block(sch, block, spatial: list[bool], lanes: int, threads_hint: int) -> None:
    """Parallelise and vectorise one block whose loops map one-to-one to its iterators (`spatial`:
    which are data-parallel)."""
    loops = sch.get_loops(block)
    if not loops or len(loops) != len(spatial):
        return
    n_spatial = 0
    while n_spatial < len(loops) and spatial[n_spatial]:
        n_spatial += 1
    if n_spatial == 0:
        return
    extents = [_extent(sch, loop) for loop in loops]
    if any(e is None for e in extents):
        return
    reduction = n_spatial < len(loops)
    # Windowed reductions (pool, depthwise conv: spatial..., reduce...) bring the last spatial loop
    # inside the reductions, to vectorise out[.., w] += in[.., w*s + k] over w.
    windowed = (reduction and n_spatial >= 2 and all(not s for s in spatial[n_spatial:])
                and extents[n_spatial - 1] >= 4
                and _window_step(sch, block, n_spatial - 1) in ((0, 1, 2) if extents[n_spatial - 1] >= 8 else (0, 1)))
    if windowed or (not reduction and extents[-1] >= 2):
        n_parallel_candidates = n_spatial - 1  # the last spatial loop is the vector loop
    else:
        n_parallel_candidates = n_spatial
    # Parallel: fuse leading spatial loops until there is enough work for the pool. (A reduction keeps
    # its init in the block: `parallel` and `vectorize` refuse a loop over an update split from it.)
    take, work = 0, 1
    while take < n_parallel_candidates and work < 4 * threads_hint:
        work *= extents[take]
        take += 1
    if take == 0 and n_parallel_candidates == 0 and n_spatial == 1 and not reduction:
        # a single long loop: split it for both
        outer, inner = sch.split(loops[0], factors=[None, lanes * 8])
        sch.parallel(outer)
        _vectorize(sch, inner, lanes)
        return
    if take:
        fused = sch.fuse(*loops[:take]) if take > 1 else loops[0]
        if work >= 2:
            sch.parallel(fused)
    loops = sch.get_loops(block)
    if windowed:  # [parallel, spatial..., w, reductions...] -> [parallel, spatial..., reductions..., w]
        vector = len(loops) - (len(spatial) - n_spatial) - 1
        sch.reorder(*loops[vector + 1:], loops[vector])
        _vectorize(sch, sch.get_loops(block)[-1], lanes)
        if extents[n_spatial - 1] >= 8:
            _epilogue_per_row(sch, block, loops[vector - 1], lanes)
    elif not reduction and n_parallel_candidates < n_spatial:
        _vectorize(sch, loops[-1], lanes)


def _epilogue_per_row(sch, block, row, lanes: int) -> None:
    """A windowed reduction's elementwise consumer (a depthwise convolution's bias and ReLU6) computed
    under the reduction's `row` loop, on the row of sums it just made, which then lives in registers:
    no intermediate plane written and read back in a second pass. MobileNetV2's depthwise 3x3
    convolutions, Intel Xeon (rocketlake), one thread: 112x112x32 0.49 -> 0.29 ms, 56x56x144
    0.78 -> 0.53, 28x28 and 14x14 5-8% faster; rows of 7 were slower this way (0.07 -> 0.10 ms),
    so rows shorter than 8 keep the second pass."""
    consumers = sch.get_consumers(block)
    if len(consumers) != 1 or _is_reduction(sch, consumers[0]):
        return
    try:
        sch.reverse_compute_at(consumers[0], row)
        sch.set_scope(block, 0, "local")
    except Exception:  # noqa: BLE001 - the consumer reads more than a row: it keeps its own pass
        return
    _vectorize(sch, sch.get_loops(consumers[0])[-1], lanes)


def _window_step(sch, block, axis: int) -> int | None:
    """How many elements the block's reads move along their last axis as its iterator `axis` steps by
    one: 1 for a stride-1 window, 2 for a stride-2 one (its vectorised loads become two vector loads
    and a de-interleave: `strided_loads_as_shuffles`); None where a read is not linear in it."""
    from tvm.sym.pattern import detect_linear_equation

    stmt = sch.get(block)
    var = stmt.iter_vars[axis].var
    step = 0
    for region in stmt.reads:
        if region.region:
            coefficients = detect_linear_equation(region.region[-1].min, [var])
            if len(coefficients) != 2:
                return None
            step = max(step, int(coefficients[0]))
    return step


def _vectorize(sch, loop, lanes: int) -> None:
    extent = _extent(sch, loop)
    if extent is None or extent < 2:
        return
    if extent <= lanes * 4:
        sch.vectorize(loop)
    elif extent % lanes == 0:
        _, inner = sch.split(loop, factors=[None, lanes])
        sch.vectorize(inner)


# ---------------------------------------------------------------------------------------------
# The pipeline


def _with_host_code(mod):
    """A graph whose every operator went to BLAS (a lone 1x1 convolution) compiles to no kernel at
    all, and TVM then exports the module's data with a host (x86) object even for aarch64, which the
    cross linker refuses. A one-element copy kernel keeps the target's code generator in play."""
    from tvm import te, tirx

    if any(isinstance(f, tirx.PrimFunc) for f in mod.functions.values()):
        return mod
    src = te.placeholder((1,), "float32", name="src")
    dst = te.compute((1,), lambda i: src[i], name="dst")
    mod = mod.clone() if hasattr(mod, "clone") else mod
    mod["neurosurgeon_copy1"] = te.create_prim_func([src, dst]).with_attr("global_symbol", "neurosurgeon_copy1")
    return mod


def strided_loads_as_shuffles():
    """A TIR pass, after vectorisation: a vector load of every other element (a stride-2 window
    vectorised over its output's width: MobileNetV2's stride-2 depthwise convolutions, max pooling)
    becomes two contiguous vector loads and a de-interleaving shuffle, which LLVM makes vpermt2ps
    on AVX-512 and uzp on NEON, where TVM's code generator would load it an element at a time. The
    second load starts one element early, so that nothing past the strided load's last element is
    read. MobileNetV2's 3x3 stride-2 depthwise convolutions, Intel Xeon, one thread, alone: 96
    channels 112 -> 56 1.06 -> 0.86 ms, 144 at 56 -> 28 0.28 -> 0.25, 192 at 28 -> 14 0.19 -> 0.11."""
    import tvm
    import tvm_ffi
    from tvm import tirx

    def rewrite(load):
        index = load.indices[0] if len(load.indices) == 1 else None
        if (not isinstance(index, tirx.Ramp) or not isinstance(index.stride, tirx.IntImm) or int(index.stride) != 2
                or getattr(load, "predicate", None) is not None):
            return load
        lanes = int(index.lanes)
        low = tirx.BufferLoad(load.source, [tirx.Ramp(index.base, 1, lanes)])
        high = tirx.BufferLoad(load.source, [tirx.Ramp(index.base + (lanes - 1), 1, lanes)])
        return tirx.Shuffle([low, high], [tirx.IntImm("int32", 2 * i + (2 * i >= lanes)) for i in range(lanes)])

    @tirx.transform.prim_func_pass(opt_level=0, name="StridedLoadsAsShuffles")
    def apply(func, _mod, _ctx):
        return func.with_body(tvm_ffi.structural_map(func.body, (tvm.ir.TensorLoad, rewrite)))

    return apply


# Below this many stores (a kernel's work: every store its loops run, `kernel_work`; about a multiply-add
# each in a product, 3-5 us of one core at this size) a kernel runs on the calling thread alone: waking
# TVM's pool and joining it costs about what the other cores would save, and even on one thread a
# parallel loop goes through the pool's launch (0.4-0.9 us a kernel). AMD EPYC Zen 4, 2 cores: SENNA's
# call 6.1 -> 5.2 us on two threads and 7.1 -> 6.2 on one with its 77 000-store layer serial; LeNet's
# kernels of 412 000 and 509 000 stores serial made it 56 -> 73 us on two threads.
PARALLEL_MIN_WORK = 1 << 17


def kernel_work(func) -> int | None:
    """How many stores a scheduled TIR function runs: each buffer store times the extents of the loops
    around it (vectorised loops included), a reduction's initial stores left out (they run once per
    output, not per loop around them); None where a loop's extent is not a constant."""
    import tvm_ffi
    from tvm import s_tir, tirx

    total, scales = [0], [1]

    class Unknown(Exception):
        pass

    def loop(node, visitor):
        if not isinstance(node.extent, tirx.IntImm):
            raise Unknown
        scales.append(scales[-1] * max(int(node.extent), 0))
        visitor.default_visit(node)
        scales.pop()

    def store(node, _visitor):
        total[0] += scales[-1]

    def block(node, visitor):
        visitor.visit(node.body)

    try:
        tvm_ffi.structural_visit(func.body, [(tirx.For, loop), (tirx.BufferStore, store), (s_tir.SBlock, block)])
    except Unknown:
        return None
    return total[0]


def small_kernels_serial(min_work: int = PARALLEL_MIN_WORK):
    """A TIR pass, before lowering: a kernel whose work (`kernel_work`) is under `min_work` runs its
    parallel loops serially (see PARALLEL_MIN_WORK)."""
    import tvm_ffi
    from tvm import tirx

    def serial(node):
        if node.kind != tirx.ForKind.PARALLEL:
            return node
        return tirx.For(node.loop_var, node.min, node.extent, tirx.ForKind.SERIAL, node.body, node.thread_binding,
                        node.annotations, node.step, node.span)

    @tirx.transform.prim_func_pass(opt_level=0, name="SmallKernelsSerial")
    def apply(func, _mod, _ctx):
        work = kernel_work(func)
        if work is None or work >= min_work:
            return func
        return func.with_body(tvm_ffi.structural_map(func.body, (tirx.For, serial)))

    return apply


# A kernel's local buffers (a register tile's accumulators) up to this size live on the stack. TVM
# lowers only "global" ones of under 1 KiB so: a "local" buffer, each task's accumulators above all,
# was TVMBackendAllocWorkspace + FreeWorkspace on every iteration of a parallel loop (MobileNetV2: 2.5%
# of its time in TVM's workspace pool), behind a pointer LLVM could not keep in registers. On the
# stack, same process, AMD EPYC Zen 4: MobileNetV2 0.86x its time before (one thread), 0.85x (two),
# Inception 0.97-0.98x, DeepFace 0.98x, ResNet-18 1.00x; answers bit for bit the same. 16 KiB keeps
# well inside a thread's stack (1 MiB on Android); larger buffers still come from the pool.
STACK_MAX_BYTES = 16 << 10


def local_buffers_on_stack(max_bytes: int = STACK_MAX_BYTES):
    """A TIR pass, after lowering: a "local" buffer of constant size up to `max_bytes` is allocated on
    the stack (TVM's `disable_lower_builtin` annotation), not from TVM's workspace pool per use."""
    import tvm_ffi
    from tvm import tirx

    def on_stack(node):
        buffer = node.buffer
        if buffer.scope() != "local" or not all(isinstance(extent, tirx.IntImm) for extent in buffer.shape):
            return node
        size = int(np.prod([int(extent) for extent in buffer.shape])) * tvm_ffi.dtype(buffer.dtype).itemsize
        if size > max_bytes:
            return node
        return tirx.AllocBuffer(buffer, {**node.annotations, "disable_lower_builtin": tirx.IntImm("bool", 1)}, node.span)

    @tirx.transform.prim_func_pass(opt_level=0, name="LocalBuffersOnStack")
    def apply(func, _mod, _ctx):
        return func.with_body(tvm_ffi.structural_map(func.body, (tirx.AllocBuffer, on_stack)))

    return apply


CPU_TIR_PIPELINE = "neurosurgeon-cpu"


def cpu_tir_pipeline() -> str:
    """The name of the TIR pipeline for a CPU build's kernels: `small_kernels_serial`, TVM's default,
    then `strided_loads_as_shuffles` and `local_buffers_on_stack` (registered with TVM on first use;
    tvm.compile takes a name)."""
    import tvm
    from tvm.tirx import compilation_pipeline

    if CPU_TIR_PIPELINE not in compilation_pipeline.PIPELINE_MAP:
        def factory():
            lower, finalize_host, finalize_device = compilation_pipeline.get_tir_pipeline("default")
            return (tvm.transform.Sequential([small_kernels_serial(), lower, strided_loads_as_shuffles(),
                                               local_buffers_on_stack()]), finalize_host,
                    finalize_device)

        compilation_pipeline.register_tir_pipeline(CPU_TIR_PIPELINE, factory)
    return CPU_TIR_PIPELINE


def cpu_phases(target, kernels: str = DEFAULT_KERNELS, tiles=None) -> tuple[list, list, list]:
    """(passes up to fused TIR functions, passes after scheduling, lowering) for a CPU target; `tiles`:
    the tiled products' choices (`tiled_products`)."""
    import importlib

    backend = importlib.import_module("tvm.relax.backend.cpu_generic.pipeline")
    legalize = backend.legalize_passes(target)
    fused = 1 + [p.info.name for p in legalize].index("FuseTIR")
    from tvm import relax

    first = []
    if kernels != "naive":  # batch norms into the convolutions before them (then their weights are constants again)
        first = [relax.transform.FoldBatchnormToConv2D(), relax.transform.FoldConstant()]
    if kernels == "blas":
        first.append(offload_gemm())
    elif kernels in TILED_WINOGRAD:
        first += [clamps_as_ops(), tiled_products(target, tiles, TILED_WINOGRAD[kernels])]
    views, sizes = ([reshape_views()], [shared_storage_sizes()]) if kernels != "naive" else ([], [])
    return (first + backend.library_dispatch_passes(target) + legalize[:fused], legalize[fused:],
            views + backend.dataflow_lower_passes(target) + backend.finalize_passes(target) + sizes)


def count_kernels(mod) -> dict:
    """Of a module's kernels after fusion: "kernels" (all), "tuned" (those a tuning database
    scheduled) and "tiled" (the products, scheduled where they are made: compiler/tiled_kernels.py)."""
    from tvm import tirx

    from .tiled_kernels import is_tiled

    funcs = [f for f in mod.functions.values() if isinstance(f, tirx.PrimFunc)]
    tiled = sum(1 for f in funcs if is_tiled(f))
    tuned = sum(1 for f in funcs if f.attrs is not None and bool(f.attrs.get("tirx.is_scheduled", False))
                and not is_tiled(f))
    return {"kernels": len(funcs), "tuned": tuned, "tiled": tiled}


def count_externs(mod) -> int:
    """External calls (R.call_dps_packed, the BLAS GEMMs) bound in the module's Relax functions."""
    import tvm
    from tvm import relax

    call_dps_packed = tvm.ir.Op.get("relax.call_dps_packed")
    return sum(1 for func in mod.functions.values() if isinstance(func, relax.Function)
               for block in func.body.blocks for binding in block.bindings
               if isinstance(binding.value, relax.Call) and binding.value.op.same_as(call_dps_packed))


def cpu_pipeline(target, kernels: str = DEFAULT_KERNELS, apply_database: bool = False, stats: dict | None = None,
                 tiles=None):
    """A relax_pipeline for tvm.compile: phases above, with MetaSchedule's current database applied
    first (if asked) and our rule for every function it has no record for. `stats`, if given, gets
    `count_kernels`'s counts and "externs" (BLAS calls) of the build."""
    import tvm
    from tvm import relax
    from tvm.s_tir import dlight

    if kernels not in KERNEL_CHOICES:
        raise ValueError(f"kernels must be one of {', '.join(KERNEL_CHOICES)}, not {kernels!r}")
    fusion, after, lower = cpu_phases(target, kernels, tiles)

    @tvm.transform.module_pass(opt_level=0, name="NeurosurgeonCPUPipeline")
    def pipeline(mod, _ctx):
        with target:
            mod = tvm.transform.Sequential(fusion)(mod)
            if apply_database:
                mod = relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(mod)
            if stats is not None:  # nothing is scheduled before the database applies
                stats.update(count_kernels(mod), externs=count_externs(mod))
            if kernels != "naive":
                mod = dlight.ApplyDefaultSchedule(parallel_loops_rule())(mod)
            mod = _with_host_code(mod)
            return tvm.transform.Sequential(after + lower)(mod)

    return pipeline
