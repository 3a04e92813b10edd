import os
import sys

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # as the runtime sets it (runtime/__init__.py)
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture
def residual_model(tmp_path):
    from models import residual_with_shape_arithmetic
    import onnx

    path = tmp_path / "residual.onnx"
    onnx.save(residual_with_shape_arithmetic(), path)
    return path
