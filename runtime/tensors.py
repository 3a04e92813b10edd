"""Tensor descriptions shared by the compiler, the manifest and the runtime."""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

import numpy as np

__all__ = ["DTYPES", "TensorInfo", "random_inputs"]

# The element types a bundle's tensors may have (numpy names).
DTYPES = ("float32", "float16", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
          "bool")


@dataclass(frozen=True)
class TensorInfo:
    """A named tensor with a static shape, as it crosses a cut or enters a segment."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def nbytes(self) -> int:
        return prod(self.shape) * np.dtype(self.dtype).itemsize

    @property
    def size(self) -> int:
        return prod(self.shape)

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype, "bytes": self.nbytes}

    @classmethod
    def from_json(cls, data: dict) -> "TensorInfo":
        """From {"name", "shape", "dtype"}; ValueError names what is wrong."""
        if not isinstance(data, dict):
            raise ValueError(f"expected an object, got {type(data).__name__}")
        name, shape, dtype = data.get("name"), data.get("shape"), data.get("dtype")
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
            raise ValueError(f"{name!r}: shape must be a list of non-negative integers, got {shape!r}")
        if dtype not in DTYPES:
            raise ValueError(f"{name!r}: dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        return cls(name, tuple(shape), dtype)


def random_inputs(tensors, seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic values for `tensors` (TensorInfo): standard normal floats, 0/1 integers (valid
    as indices and masks)."""
    rng = np.random.default_rng(seed)
    return {t.name: (rng.standard_normal(t.shape) if np.dtype(t.dtype).kind == "f"
                     else rng.integers(0, 2, size=t.shape)).astype(t.dtype) for t in tensors}
