"""Codecs for the tensors a device uploads: what crosses a cut is mostly activations, and after a ReLU
mostly zeros, so it compresses.

`shuffle-zlib` (lossless, the default where it pays): the bytes of each element are grouped by
position (all first bytes, then all second bytes, ...: the exponents of float32 sit together and
repeat), then deflated at level 1, the fastest; numpy and the standard library only. `float16` and
`int8` (one scale per tensor) lose precision and are used only when asked for by name.

On the wire (runtime/protocol.py) a coded tensor is a binary tensor whose parameters say
`content_encoding: <codec>`; its `binary_data_size` is the coded length. A tensor without the
parameter is raw, so a plain OIP client that sends raw tensors is served as before.
"""

from __future__ import annotations

import struct
import time
import zlib
from dataclasses import dataclass
from math import prod
from typing import Callable

import numpy as np

from .errors import NeurosurgeonError

__all__ = ["CODECS", "DEFAULT_CODEC", "LOSSLESS", "Codec", "CodecError", "CodecStats", "get_codec", "measure_codec",
           "probe_seconds"]


class CodecError(NeurosurgeonError):
    pass


@dataclass(frozen=True)
class Codec:
    name: str
    lossless: bool
    encode: Callable[[np.ndarray], bytes]
    _decode: Callable[[memoryview | bytes, np.dtype, int], np.ndarray]
    description: str

    def decode(self, data, dtype, shape, where: str = "tensor") -> np.ndarray:
        """The tensor of `shape` and `dtype` that `data` encodes; a CodecError names what is wrong."""
        dtype = np.dtype(dtype)
        try:
            array = self._decode(data, dtype, prod(shape))
        except (zlib.error, ValueError, struct.error) as err:
            raise CodecError(f"{where}: not valid {self.name} data ({err})") from None
        if array.size != prod(shape):
            raise CodecError(f"{where}: {self.name} data holds {array.size} elements, shape {list(shape)} needs "
                             f"{prod(shape)}")
        return array.reshape(shape)


def _shuffle_zlib_encode(array: np.ndarray) -> bytes:
    array = np.ascontiguousarray(array)
    raw = array.astype(array.dtype.newbyteorder("<"), copy=False).view(np.uint8)
    shuffled = raw.reshape(-1, array.dtype.itemsize).T.tobytes()
    return zlib.compress(shuffled, 1)


def _shuffle_zlib_decode(data, dtype: np.dtype, count: int) -> np.ndarray:
    raw = zlib.decompress(data, bufsize=max(count * dtype.itemsize, 1))
    if len(raw) != count * dtype.itemsize:
        raise ValueError(f"{len(raw)} bytes inflated, {count * dtype.itemsize} expected")
    planes = np.frombuffer(raw, dtype=np.uint8).reshape(dtype.itemsize, count)
    return planes.T.copy().view(dtype.newbyteorder("<")).astype(dtype, copy=False).ravel()


def _float16_encode(array: np.ndarray) -> bytes:
    return np.asarray(array, dtype="<f2").tobytes()


def _float16_decode(data, dtype: np.dtype, count: int) -> np.ndarray:
    return np.frombuffer(data, dtype="<f2", count=count).astype(dtype)


def _int8_encode(array: np.ndarray) -> bytes:
    array = np.asarray(array, dtype=np.float32)
    scale = float(np.abs(array).max(initial=0.0)) / 127 or 1.0
    q = np.clip(np.rint(array / scale), -127, 127).astype(np.int8)
    return struct.pack("<f", scale) + q.tobytes()


def _int8_decode(data, dtype: np.dtype, count: int) -> np.ndarray:
    (scale,) = struct.unpack_from("<f", data)
    return (np.frombuffer(data, dtype=np.int8, offset=4, count=count).astype(np.float32) * scale).astype(dtype)


CODECS: dict[str, Codec] = {c.name: c for c in (
    Codec("shuffle-zlib", True, _shuffle_zlib_encode, _shuffle_zlib_decode,
          "lossless: bytes grouped by position, then deflate level 1"),
    Codec("float16", False, _float16_encode, _float16_decode, "lossy: half precision, 2x smaller"),
    Codec("int8", False, _int8_encode, _int8_decode, "lossy: 8 bits with one scale per tensor, 4x smaller"),
)}
DEFAULT_CODEC = "shuffle-zlib"
LOSSLESS = tuple(name for name, c in CODECS.items() if c.lossless)


def get_codec(name: str, allow_lossy: bool = False) -> Codec:
    """The codec called `name`; a lossy one only when `allow_lossy` (the caller asked for it by name)."""
    codec = CODECS.get(name)
    if codec is None:
        raise CodecError(f"unknown codec {name!r} (known: {', '.join(CODECS)})")
    if not codec.lossless and not allow_lossy:
        raise CodecError(f"codec {name!r} loses precision; ask for it by name to use it")
    return codec


@dataclass(frozen=True)
class CodecStats:
    """One tensor under one codec, measured: its raw and coded bytes and the seconds to code both ways."""

    raw_bytes: int
    bytes: int
    encode_s: float
    decode_s: float

    @property
    def ratio(self) -> float:
        return self.raw_bytes / max(self.bytes, 1)

    def to_json(self) -> dict:
        return {"raw_bytes": self.raw_bytes, "bytes": self.bytes, "ratio": round(self.ratio, 3),
                "encode_s": self.encode_s, "decode_s": self.decode_s}


def measure_codec(codec: Codec, samples: list[np.ndarray], repeats: int = 3) -> CodecStats:
    """Median coded size and fastest coding times of a tensor over its samples (calibration inputs)."""
    sizes, encodes, decodes = [], [], []
    for array in samples:
        best_encode = best_decode = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            data = codec.encode(array)
            best_encode = min(best_encode, time.perf_counter() - started)
            started = time.perf_counter()
            codec.decode(data, array.dtype, array.shape)
            best_decode = min(best_decode, time.perf_counter() - started)
        sizes.append(len(data))
        encodes.append(best_encode)
        decodes.append(best_decode)
    return CodecStats(int(samples[0].nbytes), int(np.median(sizes)), float(np.median(encodes)),
                      float(np.median(decodes)))


def probe_seconds(codec: Codec, repeats: int = 5) -> float:
    """Seconds this machine takes to encode a fixed tensor (64 Ki float32, half zeros, seeded): measured
    where the codecs are calibrated and again on the device, their ratio scales the calibrated times
    to the device's speed."""
    x = np.maximum(np.random.default_rng(0).standard_normal(1 << 16), 0).astype(np.float32)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        codec.encode(x)
        best = min(best, time.perf_counter() - started)
    return best
