"""Open Inference Protocol v2 (KServe / Triton HTTP/REST) with the binary tensor data extension.

Shared by the server and the mobile side's client. A message is a JSON header, optionally followed by
raw tensor bytes; the `Inference-Header-Content-Length` header says where the JSON ends. Tensor
bytes are little-endian and row-major, one block per binary tensor in the order they are listed.
Only numeric and boolean tensors travel: BYTES (strings) are refused with a clear error. A binary
tensor may come coded (runtime/codec.py): its parameter `content_encoding` names the codec and its
`binary_data_size` is the coded length.
"""

from __future__ import annotations

import json
from math import prod

import numpy as np

from .codec import CODECS, CodecError, get_codec
from .errors import NeurosurgeonError

__all__ = ["CONTENT_ENCODING", "DATATYPES", "NUMPY_DTYPES", "HEADER_LENGTH", "LOAD_HEADER", "SEGMENT_TIMES",
           "ProtocolError",
           "encode_infer_request",
           "decode_infer_request", "encode_infer_response", "decode_infer_response", "parse_header_length",
           "cut_model_name", "parse_cut_model_name", "stage_model_name"]

HEADER_LENGTH = "Inference-Header-Content-Length"
LOAD_HEADER = "X-Neurosurgeon-Load"  # the server's load, on every answer to an authorised client
# A request parameter: true asks the answer for parameter "segment_s", the server's own seconds per
# segment of the bundle (null for a segment it has not run yet).
SEGMENT_TIMES = "segment_times"
# A binary tensor's parameter naming the codec its bytes are in (runtime/codec.py); raw without it.
CONTENT_ENCODING = "content_encoding"

DATATYPES: dict[str, str] = {
    "bool": "BOOL",
    "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32", "uint64": "UINT64",
    "int8": "INT8", "int16": "INT16", "int32": "INT32", "int64": "INT64",
    "float16": "FP16", "float32": "FP32", "float64": "FP64",
}
NUMPY_DTYPES: dict[str, str] = {v: k for k, v in DATATYPES.items()}
JSON_TYPES = {"b": (bool,), "i": (int,), "u": (int,), "f": (int, float)}  # JSON values each dtype kind accepts


class ProtocolError(NeurosurgeonError):
    """A message that does not follow the protocol; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def cut_model_name(bundle_name: str, cut: int) -> str:
    return f"{bundle_name}-cut{cut:02d}"


def stage_model_name(bundle_name: str) -> str:
    """The model that runs any stage: the segments between the tensors given and those asked for."""
    return f"{bundle_name}-stage"


def parse_cut_model_name(bundle_name: str, name: str) -> int | None:
    """The cut a model name serves, or None if it is not one of this bundle's cut models."""
    prefix = f"{bundle_name}-cut"
    digits = name[len(prefix):]
    if not name.startswith(prefix) or not digits.isdecimal():
        return None
    cut = int(digits)
    return cut if cut_model_name(bundle_name, cut) == name else None  # one spelling per cut: no "-cut007"


def parse_header_length(value: str | None) -> int | None:
    """The value of an Inference-Header-Content-Length HTTP header."""
    if value is None:
        return None
    try:
        length = int(value)
    except ValueError:
        raise ProtocolError(f"{HEADER_LENGTH} must be an integer, got {value!r}") from None
    if length < 0:
        raise ProtocolError(f"{HEADER_LENGTH} must not be negative, got {length}")
    return length


# --- encoding --------------------------------------------------------------------------------------


def encode_infer_request(inputs: dict[str, np.ndarray], outputs: list[str] | None = None, binary: bool = True,
                         parameters: dict | None = None, request_id: str | None = None,
                         codecs: dict[str, str] | None = None) -> tuple[bytes, dict[str, str]]:
    """Body and extra HTTP headers of an infer request. With `binary`, tensors travel as raw bytes
    and outputs are asked for as raw bytes too (all outputs, when `outputs` is None). `codecs`: the
    inputs sent coded (runtime/codec.py), by name, with the codec each is sent in."""
    entries, chunks = _encode_tensors(inputs, set(inputs) if binary else set(), codecs or {})
    header: dict = {"inputs": entries}
    if request_id is not None:
        header["id"] = request_id
    parameters = dict(parameters or {})
    if outputs is not None:
        header["outputs"] = [{"name": name, "parameters": {"binary_data": binary}} for name in outputs]
    elif binary:
        parameters["binary_data_output"] = True  # Triton's switch for "every output as binary"
    if parameters:
        header["parameters"] = parameters
    return _join(header, chunks)


def encode_infer_response(model_name: str, outputs: dict[str, np.ndarray], binary_outputs: set[str] | bool,
                          parameters: dict | None = None, request_id: str | None = None,
                          model_version: str | None = None) -> tuple[bytes, dict[str, str]]:
    """Body and extra HTTP headers of an infer response; `binary_outputs` names the outputs sent as
    raw bytes (True: all, False: none)."""
    if isinstance(binary_outputs, bool):
        binary_outputs = set(outputs) if binary_outputs else set()
    entries, chunks = _encode_tensors(outputs, binary_outputs)
    header: dict = {"model_name": model_name}
    if model_version is not None:
        header["model_version"] = model_version
    if request_id is not None:
        header["id"] = request_id
    if parameters:
        header["parameters"] = parameters
    header["outputs"] = entries
    return _join(header, chunks)


def _encode_tensors(tensors: dict[str, np.ndarray], binary: set[str],
                    codecs: dict[str, str] | None = None) -> tuple[list[dict], list[bytes]]:
    entries, chunks = [], []
    codecs = codecs or {}
    for name, value in tensors.items():
        array = np.asarray(value)
        datatype = DATATYPES.get(array.dtype.name)
        if datatype is None:
            raise ProtocolError(f"tensor {name!r}: numpy dtype {array.dtype} has no protocol datatype "
                                f"(supported: {', '.join(DATATYPES)})")
        entry: dict = {"name": name, "shape": list(array.shape), "datatype": datatype}
        if name in codecs:
            if name not in binary:
                raise ProtocolError(f"tensor {name!r}: only binary tensors can be sent coded")
            coded = get_codec(codecs[name], allow_lossy=True).encode(array)
            entry["parameters"] = {"binary_data_size": len(coded), CONTENT_ENCODING: codecs[name]}
            chunks.append(coded)
        elif name in binary:
            raw = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes(order="C")
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = array.ravel().tolist()
        entries.append(entry)
    return entries, chunks


def _join(header: dict, chunks: list[bytes]) -> tuple[bytes, dict[str, str]]:
    text = json.dumps(header, separators=(",", ":")).encode()
    if not chunks:
        return text, {"Content-Type": "application/json"}
    return b"".join([text, *chunks]), {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(text))}


# --- decoding --------------------------------------------------------------------------------------


def decode_infer_request(body: bytes, header_length: int | None) -> tuple[dict[str, np.ndarray], dict[str, bool], dict]:
    """(inputs by name, requested outputs: name -> wants binary, request parameters).

    No requested outputs means all of them, as binary when the request parameter
    `binary_data_output` is true; an output that does not say `binary_data` follows that parameter too.
    """
    header, tail = _split(body, header_length, "request")
    parameters = _object(header, "parameters", "request")
    entries = _list(header, "inputs", "request", required=True)
    if not entries:
        raise ProtocolError("request has no inputs")
    inputs = _decode_tensors(entries, tail, "input")
    default_binary = bool(parameters.get("binary_data_output", False))
    requested: dict[str, bool] = {}
    for i, entry in enumerate(_list(header, "outputs", "request")):
        name = _name(entry, f"outputs[{i}]")
        if name in requested:
            raise ProtocolError(f"output {name!r} is requested twice")
        wants = _object(entry, "parameters", f"output {name!r}").get("binary_data", default_binary)
        if not isinstance(wants, bool):
            raise ProtocolError(f"output {name!r}: parameter binary_data must be true or false, got {wants!r}")
        requested[name] = wants
    return inputs, requested, parameters


def decode_infer_response(body: bytes, header_length: int | None) -> tuple[dict[str, np.ndarray], dict]:
    """(outputs by name, top-level response parameters). An error answer raises ProtocolError."""
    header, tail = _split(body, header_length, "response")
    if "error" in header and "outputs" not in header:
        raise ProtocolError(f"server error: {header['error']}")
    outputs = _decode_tensors(_list(header, "outputs", "response", required=True), tail, "output")
    return outputs, _object(header, "parameters", "response")


def _split(body: bytes, header_length: int | None, what: str) -> tuple[dict, memoryview]:
    view = memoryview(body)
    if header_length is None:
        header_length = len(view)
    elif header_length > len(view):
        raise ProtocolError(f"{HEADER_LENGTH} is {header_length} but the {what} body has only {len(view)} bytes")
    try:
        header = json.loads(bytes(view[:header_length]))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ProtocolError(f"{what} header is not valid JSON ({err})") from None
    except RecursionError:
        raise ProtocolError(f"{what} header nests JSON too deeply") from None
    if not isinstance(header, dict):
        raise ProtocolError(f"{what} header must be a JSON object, got {type(header).__name__}")
    return header, view[header_length:]


def _decode_tensors(entries: list, tail: memoryview, kind: str) -> dict[str, np.ndarray]:
    """Tensors from their JSON entries, taking binary blocks from `tail` in order; the blocks must
    add up to exactly the bytes that follow the JSON header."""
    tensors: dict[str, np.ndarray] = {}
    offset = 0
    for i, entry in enumerate(entries):
        name = _name(entry, f"{kind}s[{i}]")
        where = f"{kind} {name!r}"
        if name in tensors:
            raise ProtocolError(f"{where} appears twice")
        dtype, shape = _dtype_and_shape(entry, where)
        tensor_parameters = _object(entry, "parameters", where)
        size, encoding = tensor_parameters.get("binary_data_size"), tensor_parameters.get(CONTENT_ENCODING)
        if encoding is not None and size is None:
            raise ProtocolError(f"{where}: {CONTENT_ENCODING} {encoding!r} is for binary data; the tensor has none")
        if size is None:
            tensors[name] = _from_json_data(entry, dtype, shape, where)
            continue
        if "data" in entry:
            raise ProtocolError(f"{where} has both JSON 'data' and binary_data_size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ProtocolError(f"{where}: binary_data_size must be a non-negative integer, got {size!r}")
        if encoding is None and size != prod(shape) * dtype.itemsize:
            raise ProtocolError(f"{where}: binary_data_size is {size} bytes but shape {shape} of "
                                f"{DATATYPES[dtype.name]} needs {prod(shape) * dtype.itemsize}")
        if offset + size > len(tail):
            raise ProtocolError(f"binary data is truncated: {where} needs bytes {offset}..{offset + size} after the "
                                f"JSON header, the body has only {len(tail)}")
        if encoding is not None:
            try:
                codec = get_codec(encoding, allow_lossy=True) if isinstance(encoding, str) else None
            except CodecError:
                codec = None
            if codec is None:
                raise ProtocolError(f"{where}: unknown {CONTENT_ENCODING} {encoding!r} (this server decodes "
                                    f"{', '.join(CODECS)})")
            try:
                tensors[name] = codec.decode(tail[offset:offset + size], dtype, shape, where)
            except CodecError as err:
                raise ProtocolError(str(err)) from None
        else:
            raw = np.frombuffer(tail[offset:offset + size], dtype=dtype.newbyteorder("<"))
            tensors[name] = raw.astype(dtype, copy=False).reshape(shape)
        offset += size
    if offset != len(tail):
        raise ProtocolError(f"{len(tail) - offset} unexpected bytes after the binary tensor data "
                            f"(the binary_data_size values add up to {offset})")
    return tensors


def _dtype_and_shape(entry: dict, where: str) -> tuple[np.dtype, list[int]]:
    datatype = entry.get("datatype")
    if datatype == "BYTES":
        raise ProtocolError(f"{where}: BYTES (string) tensors are not supported; send numeric tensors")
    if datatype not in NUMPY_DTYPES:
        raise ProtocolError(f"{where}: unknown datatype {datatype!r} (supported: {', '.join(NUMPY_DTYPES)})")
    shape = entry.get("shape")
    if not (isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        raise ProtocolError(f"{where}: shape must be a list of non-negative integers, got {shape!r}")
    return np.dtype(NUMPY_DTYPES[datatype]), shape


def _from_json_data(entry: dict, dtype: np.dtype, shape: list[int], where: str) -> np.ndarray:
    """A tensor from JSON 'data': a flat row-major list, or nested lists (both are allowed by OIP v2)."""
    if "data" not in entry:
        raise ProtocolError(f"{where} has neither JSON 'data' nor parameters.binary_data_size")
    datatype = DATATYPES[dtype.name]
    # Checked as Python objects: numpy would parse strings as numbers, truncate floats to integers and
    # round 64-bit integers through float64.
    values = np.array(entry["data"], dtype=object).ravel()
    allowed = JSON_TYPES[dtype.kind]
    bad = next((v for v in values if type(v) not in allowed), None)
    if bad is not None:
        raise ProtocolError(f"{where}: 'data' element {bad!r} is not valid for {datatype}")
    if values.size != prod(shape):
        raise ProtocolError(f"{where}: 'data' has {values.size} elements but shape {shape} needs {prod(shape)}")
    try:
        return np.array(values.tolist(), dtype=dtype).reshape(shape)
    except OverflowError:
        raise ProtocolError(f"{where}: 'data' has values outside the range of {datatype}") from None


def _name(entry, where: str) -> str:
    if not isinstance(entry, dict):
        raise ProtocolError(f"{where} must be a JSON object")
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        raise ProtocolError(f"{where} has no 'name'")
    return name


def _object(container: dict, key: str, where: str) -> dict:
    value = container.get(key, {})
    if not isinstance(value, dict):
        raise ProtocolError(f"{where}: '{key}' must be a JSON object")
    return value


def _list(container: dict, key: str, where: str, required: bool = False) -> list:
    if required and key not in container:
        raise ProtocolError(f"{where} has no '{key}'")
    value = container.get(key, [])
    if not isinstance(value, list):
        raise ProtocolError(f"{where}: '{key}' must be a JSON list")
    return value
