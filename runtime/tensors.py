"""Tensor descriptions shared by the compiler, the manifest and the runtime."""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

import numpy as np


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
