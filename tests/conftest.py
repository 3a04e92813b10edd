import os
import sys

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # tests share the cores among servers and devices: no spinning
from pathlib import Path

import pytest
from hypothesis import settings

# CI runs the property-based tests with a fixed seed (a red CI names a change, not a lucky draw);
# developers' runs explore new examples each time, and replay the failures they found.
settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    settings.load_profile("ci")

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture
def residual_model(tmp_path):
    from models import residual_with_shape_arithmetic
    import onnx

    path = tmp_path / "residual.onnx"
    onnx.save(residual_with_shape_arithmetic(), path)
    return path
