"""Every candidate cut of every zoo network, device segments then server segments (both x86-host so
they run here), reproduces onnxruntime on the whole model: cut at every boundary a compiler does not
fuse (fused-layers), and pruned to the upload envelope (the default: longer segments, each holding what
several fused-layers segments did). Sizes are shrunk: the cut logic does not depend on width or
resolution, and the suite stays fast."""

import pytest

from neurosurgeon.tools import zoo
from neurosurgeon.api import CompileOptions
from neurosurgeon.api import compile as compile_model
from neurosurgeon.tools.verify import verify_bundle

FAST = {"alexnet", "resnet18", "inception", "pos"}


def small_model(name: str):
    size = zoo.min_input_size(name)
    return zoo.build(name, input_size=None if size is None else max(size, 32), width=0.125)


@pytest.mark.parametrize("partitioner", ["fused-layers", "upload-envelope"])
@pytest.mark.parametrize("name", [n if n in FAST else pytest.param(n, marks=pytest.mark.slow) for n in zoo.MODELS])
def test_every_cut_reproduces_onnxruntime(name, partitioner, tmp_path):
    model_path = tmp_path / f"{name}.onnx"
    zoo.save(small_model(name), model_path)
    result = compile_model(model_path, tmp_path / "bundle", CompileOptions("x86-host", "x86-host", progress=False,
                                                                           partitioner=partitioner))
    assert result.manifest["identity"]["options"]["partitioner"] == partitioner
    checks = verify_bundle(result.path, model_path, rtol=1e-4, atol=1e-5)
    # upload-envelope may keep only cloud-only and device-only (a text model whose hidden layers are wider)
    assert len(checks) == len(result.plan.segments) + 1 >= (3 if partitioner == "fused-layers" else 2)
    failed = [(c.cut, c.max_abs_error, c.max_rel_error) for c in checks if not c.ok]
    assert not failed, f"{name}: cuts that differ from onnxruntime: {failed}"
