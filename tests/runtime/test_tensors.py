"""Tensors into and out of compiled functions (runtime/bundle.py `to_device`, `fetch`): no copy where
the memory allows it (tvm.runtime.tensor's copy cost 18 us even for SENNA's 250 floats, more than the
model), and the right answer where it does not."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import tvm
from models import windowed_reductions

from neurosurgeon.compiler.build import build_graph
from neurosurgeon.runtime.bundle import ALIGNMENT, fetch, load_artifact, results, to_device
from neurosurgeon.runtime.tensors import TensorInfo
from neurosurgeon.targets import get_preset


def _aligned(count: int, offset: int = 0) -> np.ndarray:
    """`count` float32 values starting `offset` bytes past a 64-byte boundary."""
    raw = np.zeros(count * 4 + offset + ALIGNMENT, np.uint8)
    start = -raw.ctypes.data % ALIGNMENT + offset
    return raw[start:start + count * 4].view(np.float32)


def test_an_aligned_writable_input_is_used_in_place_and_any_other_is_copied_to_aligned_memory():
    device = tvm.cpu(0)
    aligned = _aligned(1000)
    aligned[:] = np.arange(1000)
    assert np.shares_memory(np.from_dlpack(to_device(aligned, device)), aligned)
    unaligned = _aligned(1000, offset=4)
    unaligned[:] = np.arange(1000)
    readonly = _aligned(1000)
    readonly[:] = np.arange(1000)
    readonly.flags.writeable = False  # a request's bytes (np.frombuffer): DLPack cannot share them
    for array in (unaligned, readonly):
        copy = np.from_dlpack(to_device(array, device))
        assert not np.shares_memory(copy, array) and copy.ctypes.data % ALIGNMENT == 0
        np.testing.assert_array_equal(copy, array)


def test_a_compiled_function_answers_right_whatever_its_inputs_memory_and_its_results_stay(tmp_path):
    """Inputs aligned, unaligned and read-only give onnxruntime's answer; a result fetched as a view of
    the function's memory is left alone by the calls after it."""
    model = windowed_reductions()
    shape = (1, 32, 28, 28)
    build_graph(model, [TensorInfo("x", shape, "float32")], get_preset("x86-host"), tmp_path / "w.so", "windowed")
    device = tvm.cpu(0)
    function = load_artifact(tmp_path / "w.so", device)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    size = int(np.prod(shape))
    kept = []
    for offset, writable in ((0, True), (4, True), (0, False), (20, False)):
        x = _aligned(size, offset).reshape(shape)
        x[...] = rng.standard_normal(shape)
        x.flags.writeable = writable
        outputs = [fetch(r) for r in results(function(to_device(x, device)))]
        expected = session.run(None, {"x": np.array(x)})
        for ours, reference in zip(outputs, expected):
            np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-5)
        kept.append((outputs, [o.copy() for o in outputs]))
    for outputs, copies in kept:
        for view, copy in zip(outputs, copies):
            np.testing.assert_array_equal(view, copy)


def test_what_tvm_refuses_is_a_one_line_bundle_error(tmp_path):
    """A file that is no artifact, and a tensor the compiled function refuses (TVM's check raised
    inside it): each a BundleError naming the file or segment, not a traceback from the runtime."""
    import pytest

    from neurosurgeon.compiler.pipeline import CompileOptions, compile_model
    from neurosurgeon.runtime.bundle import Bundle, SegmentExecutor
    from neurosurgeon.runtime.errors import BundleError

    (tmp_path / "not.so").write_text("not a shared object\n")
    with pytest.raises(BundleError, match=r"not\.so: artifact does not load: "):
        load_artifact(tmp_path / "not.so", tvm.cpu(0))
    built = compile_model(windowed_reductions(), tmp_path / "b", CompileOptions("x86-host", "x86-host", progress=False))
    bundle = Bundle(built.path)
    executor = SegmentExecutor(bundle, "mobile")
    wrong = to_device(_aligned(32 * 27 * 28).reshape(1, 32, 27, 28), executor.device)  # one row short
    with pytest.raises(BundleError, match=r"mobile segment 0 failed: .*27 vs\. 28") as raised:
        executor.run({bundle.inputs[0].name: wrong}, [0])
    assert "\n" not in str(raised.value)
