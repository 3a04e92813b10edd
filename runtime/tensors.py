"""Tensor descriptions shared by the compiler, the manifest and the runtime."""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

import numpy as np

__all__ = ["TensorInfo", "random_inputs"]


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
        return cls(data["name"], tuple(int(d) for d in data["shape"]), data["dtype"])


def random_inputs(tensors, seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic values for `tensors` (TensorInfo): standard normal floats, 0/1 integers (valid
    as indices and masks)."""
    rng = np.random.default_rng(seed)
    return {t.name: (rng.standard_normal(t.shape) if np.dtype(t.dtype).kind == "f"
                     else rng.integers(0, 2, size=t.shape)).astype(t.dtype) for t in tensors}
