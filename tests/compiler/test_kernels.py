"""The schedules of compiler/kernels.py on the kernels TVM generates for a CPU (the GEMMs go to BLAS)."""

from __future__ import annotations

import re

import numpy as np
import onnxruntime as ort
from models import heavy_convs, windowed_reductions

from neurosurgeon.compiler.build import build_graph
from neurosurgeon.compiler.importer import import_graph
from neurosurgeon.compiler.kernels import SHARED_STORAGE_FLOOR, SHARED_STORAGE_MIN, cpu_phases, parallel_loops_rule
from neurosurgeon.runtime.bundle import load_artifact
from neurosurgeon.runtime.tensors import TensorInfo
from neurosurgeon.targets import get_preset


def _inputs(model):
    return [TensorInfo(i.name, tuple(d.dim_value for d in i.type.tensor_type.shape.dim), "float32")
            for i in model.graph.input]


def _scheduled(model):
    """{kernel name: TVMScript} after fusion and our schedule rule, for the x86 host."""
    import tvm
    from tvm.s_tir import dlight

    target = get_preset("x86-host").tvm_target()
    fusion, _after, _lower = cpu_phases(target, "blas")
    with target:
        mod = tvm.transform.Sequential(fusion)(import_graph(model, _inputs(model), "windowed"))
        mod = dlight.ApplyDefaultSchedule(parallel_loops_rule())(mod)
    return {gvar.name_hint: func.script() for gvar, func in mod.functions.items() if isinstance(func, tvm.tirx.PrimFunc)}


def test_depthwise_convolutions_pad_per_channel_and_vectorise_their_rows():
    """A depthwise convolution read its input through a border condition in its innermost loop, and
    its width loop stayed scalar below 16 lanes: now the padded plane is made per channel, inside the
    parallel channel loop, and the window is vectorised over the width: a stride-1 window always, a
    stride-2 one where its rows have 8 outputs or more (its loads de-interleaved: 7 measured slower)."""
    depthwise = {name: text.splitlines() for name, text in _scheduled(windowed_reductions()).items()
                 if "conv2d" in name}
    assert len(depthwise) == 3
    strided = 0
    for name, lines in depthwise.items():
        at = next(i for i, line in enumerate(lines) if 'T.sblock("group_conv2d' in line)
        block = lines[at:next(i for i in range(at + 1, len(lines)) if "T.sblock" in lines[i])]
        assert not any("if_then_else" in line for line in block), name  # reads the padded plane
        assert any("T.parallel" in line for line in lines[:at]), name
        pad = next(i for i, line in enumerate(lines) if 'T.sblock("pad_temp")' in line)
        assert pad < at and not any("T.parallel" in line for line in lines[pad:at]), name  # under the channel loop
        strided += any("* T.int64(2)" in line for line in block)
        assert "T.vectorized" in lines[at - 1], name
    assert strided == 1


def test_a_stride_2_window_loads_two_vectors_and_deinterleaves_them_reading_nothing_past_its_last_element():
    """TVM's code generator loads a vector of every other element one element at a time; the CPU
    builds' TIR pipeline loads two contiguous vectors and shuffles their even elements out, the
    second vector ending exactly at the strided load's last element (the last element of `a` here)."""
    import tvm
    from tvm import s_tir, te

    from neurosurgeon.compiler.kernels import cpu_tir_pipeline

    a = te.placeholder((31,), "float32", name="a")
    out = te.compute((16,), lambda i: a[2 * i] * 2.0, name="out")
    sch = s_tir.Schedule(te.create_prim_func([a, out]))
    sch.vectorize(sch.get_loops(sch.get_sblock("out"))[0])
    mod = tvm.IRModule({"main": sch.mod["main"].with_attr("global_symbol", "main")})
    target = get_preset("x86-host").tvm_target()
    lowered = tvm.tirx.get_tir_pipeline(cpu_tir_pipeline())[0](tvm.tirx.transform.BindTarget(target.with_host(target))(mod))
    text = lowered.script()
    assert "T.Shuffle" in text and "T.Ramp(0, 2, 16)" not in text, text
    assert set(re.findall(r"T\.Ramp\((\d+), (\d+), (\d+)\)", text)) == {("0", "1", "16"), ("15", "1", "16")}
    x = np.arange(31, dtype=np.float32)
    result = tvm.runtime.tensor(np.zeros(16, np.float32))
    tvm.tirx.build(mod, target=target, pipeline=cpu_tir_pipeline())(tvm.runtime.tensor(x), result)
    np.testing.assert_array_equal(result.numpy(), x[::2] * 2.0)


def test_a_kernel_of_little_work_runs_on_the_calling_thread():
    """A kernel's work is every store its loops run (a reduction's initial stores aside). One of less
    work than PARALLEL_MIN_WORK runs its parallel loops serially: waking TVM's pool and joining it
    cost what the other cores save (SENNA's layers of 2-3 us); one of more keeps them."""
    import tvm
    from tvm import s_tir, te

    from neurosurgeon.compiler.kernels import PARALLEL_MIN_WORK, cpu_tir_pipeline, kernel_work

    target = get_preset("x86-host").tvm_target()
    rng = np.random.default_rng(0)
    for rows, parallel in ((32, False), (128, True)):  # 49 152 and 196 608 multiply-adds
        a, b = te.placeholder((rows, 32), "float32", name="a"), te.placeholder((32, 48), "float32", name="b")
        k = te.reduce_axis((0, 32), "k")
        c = te.compute((rows, 48), lambda i, j: te.sum(a[i, k] * b[k, j], axis=k), name="c")
        sch = s_tir.Schedule(te.create_prim_func([a, b, c]))
        sch.parallel(sch.get_loops(sch.get_sblock("c"))[0])
        assert kernel_work(sch.mod["main"]) == rows * 48 * 32
        assert (rows * 48 * 32 >= PARALLEL_MIN_WORK) == parallel
        mod = tvm.IRModule({"main": sch.mod["main"].with_attr("global_symbol", "main")})
        lower = tvm.tirx.get_tir_pipeline(cpu_tir_pipeline())[0]
        assert ("T.parallel" in lower(tvm.tirx.transform.BindTarget(target.with_host(target))(mod)).script()) == parallel
        x, w = rng.standard_normal((rows, 32)).astype(np.float32), rng.standard_normal((32, 48)).astype(np.float32)
        result = tvm.runtime.tensor(np.zeros((rows, 48), np.float32))
        tvm.tirx.build(mod, target=target, pipeline=cpu_tir_pipeline())(tvm.runtime.tensor(x), tvm.runtime.tensor(w), result)
        np.testing.assert_allclose(result.numpy(), x @ w, rtol=1e-5, atol=1e-5)


def test_a_tasks_local_accumulators_live_on_its_stack():
    """A parallel task's "local" buffer (a register tile's accumulators) of up to STACK_MAX_BYTES is
    on the stack: TVM took it from its workspace pool on every iteration (MobileNetV2 0.86x the time
    without); a larger one still comes from the pool. Both compute the product."""
    import tvm
    from tvm import s_tir, te

    from neurosurgeon.compiler.kernels import STACK_MAX_BYTES, cpu_tir_pipeline

    target = get_preset("x86-host").tvm_target()
    rng = np.random.default_rng(0)
    for columns in (64, 8192):  # a row of sums: 256 bytes, 32 KiB
        a, b = te.placeholder((64, 32), "float32", name="a"), te.placeholder((32, columns), "float32", name="b")
        k = te.reduce_axis((0, 32), "k")
        c = te.compute((64, columns), lambda i, j: te.sum(a[i, k] * b[k, j], axis=k), name="c")
        sch = s_tir.Schedule(te.create_prim_func([a, b, c]))
        sch.cache_write(sch.get_sblock("c"), 0, "local")
        rows = sch.get_loops(sch.get_sblock("c"))[0]
        sch.parallel(rows)
        sch.reverse_compute_at(sch.get_sblock("c_local"), rows)
        lib = tvm.tirx.build(tvm.IRModule({"main": sch.mod["main"].with_attr("global_symbol", "main")}),
                             target=target, pipeline=cpu_tir_pipeline())
        on_stack = columns * 4 <= STACK_MAX_BYTES
        assert ("TVMBackendAllocWorkspace" in lib.inspect_source("ll")) == (not on_stack), columns
        x, w = rng.standard_normal((64, 32)).astype(np.float32), rng.standard_normal((32, columns)).astype(np.float32)
        result = tvm.runtime.tensor(np.zeros((64, columns), np.float32))
        lib(tvm.runtime.tensor(x), tvm.runtime.tensor(w), result)
        np.testing.assert_allclose(result.numpy(), x @ w, rtol=1e-5, atol=1e-4)


def test_a_depthwise_rows_bias_and_relu6_are_applied_while_the_row_is_in_registers():
    """The bias and ReLU6 after a depthwise convolution were a second parallel pass over a plane the
    convolution wrote to memory; now, for rows of 8 or more, they run under the convolution's row loop
    on a row of sums kept local (rows of 7 measured slower so, and keep the pass). (The widths are
    the inputs': the stride-2 convolution's rows of 14 come from 28.)"""
    depthwise = {name: text for name, text in _scheduled(windowed_reductions()).items() if "conv2d" in name}
    per_row = {name for name, text in depthwise.items() if 'scope="local"' in text}
    for name in per_row:  # one parallel loop nest: the epilogue is inside the convolution's
        assert depthwise[name].count("T.parallel") == 1, name
    widths = {name: re.search(r"T\.Buffer\(\(T\.int64\(1\), T\.int64\(32\), T\.int64\((\d+)\)", text).group(1)
              for name, text in depthwise.items()}
    assert per_row == {name for name in depthwise if int(widths[name]) >= 8} and per_row


def test_windowed_reductions_equal_onnxruntime(tmp_path):
    model = windowed_reductions()
    path = tmp_path / "windowed.so"
    build_graph(model, _inputs(model), get_preset("x86-host"), path, "windowed")
    import tvm

    x = np.random.default_rng(0).standard_normal((1, 32, 28, 28)).astype(np.float32)
    ours = load_artifact(path, tvm.cpu(0))(tvm.runtime.tensor(x)).numpy()
    reference = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-5)


def test_vector_width_is_what_llvm_says_the_cpu_has():
    """The tiles and vectorised loops are sized by the target's float32 lanes. Intel Xeon VMs report
    `rocketlake`, which a list of CPU names missed: its builds got AVX2 tiles at half the width
    (MobileNetV2 2.0x onnxruntime on such a VM)."""
    import tvm

    from neurosurgeon.compiler.kernels import vector_lanes

    def lanes(**attrs):
        return vector_lanes(tvm.target.Target({"kind": "llvm", **attrs}))

    x86 = {"mtriple": "x86_64-linux-gnu"}
    assert lanes(**x86, mcpu="rocketlake") == 16
    assert lanes(**x86, mcpu="znver5") == 16
    assert lanes(**x86, mcpu="sapphirerapids") == 16
    assert lanes(**x86, mcpu="haswell") == 8
    assert lanes(**x86, mcpu="znver3") == 8
    assert lanes(**x86, mcpu="rocketlake", mattr=["-avx512f"]) == 8
    assert lanes(**x86, mcpu="haswell", mattr=["+avx512f"]) == 16
    assert lanes(mtriple="aarch64-linux-gnu", mcpu="cortex-a76") == 4


def _planned_storages(path) -> list[int]:
    """Bytes of each storage an artifact's static memory plan allocates (vm.builtin.alloc_storage's
    constant shape), in the order it allocates them."""
    import tvm

    module = tvm.runtime.load_module(str(path))
    text = module["stats"]().split("Constant pool (# ", 1)[1]
    constants, depth, item, quoted = [], 0, "", False
    for ch in text[text.index("[") + 1:]:  # the pool's items, split at its top-level commas
        quoted = quoted != (ch == '"')
        if not quoted and ch in "[]":
            depth += 1 if ch == "[" else -1
            if depth < 0:
                break
        if not quoted and ch == "," and depth == 0:
            constants.append(item.strip())
            item = ""
        else:
            item += ch
    constants.append(item.strip())
    return [int(re.search(r"\d+", constants[int(i)]).group())
            for i in re.findall(r"alloc_storage in: %vm, c\[(\d+)\]", module["as_text"]())]


def test_segments_planned_storages_have_the_sizes_every_artifact_shares(tmp_path):
    # Two graphs of different sizes, as two segments of a model: the k-th largest storage of each is
    # allocated at one size, so TVM's pooled allocator hands the second the first one's buffers.
    import tvm

    sizes = {}
    for channels, size in ((32, 56), (32, 28), (4, 28)):
        model = heavy_convs(channels, size)
        path = tmp_path / f"heavy{channels}x{size}.so"
        build_graph(model, _inputs(model), get_preset("x86-host"), path, "heavy")
        sizes[channels, size] = _planned_storages(path)
        x = np.random.default_rng(0).standard_normal((1, channels, size, size)).astype(np.float32)
        ours = load_artifact(path, tvm.cpu(0))(tvm.runtime.tensor(x)).numpy()
        reference = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-4)
    for planned in sizes[32, 56], sizes[32, 28]:
        assert planned and sorted(planned) == [SHARED_STORAGE_FLOOR + 4096 * k for k in range(len(planned))], planned
    assert sizes[4, 28] and max(sizes[4, 28]) < SHARED_STORAGE_MIN, sizes[4, 28]  # small ones keep their own sizes


def test_tvm_direct_keeps_3x3_convolutions_direct_and_the_artifact_holds_the_models_weights(tmp_path):
    """`--kernels tvm-direct`: no Winograd kernel, whose transformed weights take 16 values per 9, so the
    artifact is smaller by about 7/9 of the 3x3 weights; both builds equal onnxruntime."""
    import subprocess

    import tvm

    from neurosurgeon.compiler.tiled_kernels import conv_variants

    model = heavy_convs(channels=64, size=16)
    x = np.random.default_rng(1).standard_normal((1, 64, 16, 16)).astype(np.float32)
    reference = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    sizes, kernels = {}, {}
    for choice in ("tvm", "tvm-direct"):
        path = tmp_path / f"{choice}.so"
        build_graph(model, _inputs(model), get_preset("x86-host"), path, "heavy", kernels=choice)
        ours = load_artifact(path, tvm.cpu(0))(tvm.runtime.tensor(x)).numpy()
        np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-4)
        symbols = subprocess.run(["nm", "-D", "--defined-only", str(path)], capture_output=True, text=True,
                                 check=True).stdout
        kernels[choice] = sorted(set(re.findall(r"conv2d_(winograd|direct)", symbols)))
        sizes[choice] = path.stat().st_size
    assert kernels == {"tvm": ["winograd"], "tvm-direct": ["direct"]}
    weights = 2 * 64 * 64 * 9 * 4
    assert sizes["tvm"] - sizes["tvm-direct"] > 0.7 * weights * 7 / 9, sizes
    # and tuning has the direct kernel's tile choices to time for such a convolution
    geometry = ((1, 1), (1, 1, 1, 1), (1, 1))
    assert conv_variants((1, 64, 16, 16), (64, 64, 3, 3), *geometry, 16) == [{}]
    assert len(conv_variants((1, 64, 16, 16), (64, 64, 3, 3), *geometry, 16, winograd=False)) > 1
