"""The server half: a bundle's server-side segments behind the Open Inference Protocol v2.

A plain ASGI 3 application (run it under any ASGI server; `neurosurgeon serve` uses uvicorn).
Models:
- `<bundle>-stage` runs any stage of any schedule: given tensors by name and asked for tensors by
  name, it runs exactly the segments between them (runtime/schedule.py's `TensorGraph.stage`), and
  refuses with 400 what does not add up (a tensor needed but not given, one given but not read);
- `<bundle>-cutKK`, for each cut k < S, takes the tensors the mobile side uploads at cut k and runs
  segments k..S-1; the bundle's own name is the whole model (cut 0), so a plain Triton client can
  send the raw input.
The server keeps nothing between requests. Every answer carries its load (queue length, busy share,
mean service time, expected wait), which the mobile side's planner feeds on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from .auth import token_matches
from .bundle import LOAD_MODEL_FILE, LOAD_MODEL_FORMAT, Bundle, SegmentExecutor, fetch
from .errors import BundleError
from .protocol import (
    DATATYPES,
    HEADER_LENGTH,
    LOAD_HEADER,
    ProtocolError,
    cut_model_name,
    decode_infer_request,
    encode_infer_response,
    parse_cut_model_name,
    parse_header_length,
    stage_model_name,
)
from .schedule import StageError, TensorGraph
from .tensors import TensorInfo

__all__ = ["PLATFORM", "InferenceServer", "ServedModel", "read_load_model", "served_models"]

log = logging.getLogger("neurosurgeon.server")

PLATFORM = "neurosurgeon_tvm"
MODEL_VERSION = "1"
LIVE_PATH = "/v2/health/live"


@dataclass(frozen=True)
class ServedModel:
    """One OIP model: fixed `segments` from fixed inputs (a cut), or, with `segments` None, any stage:
    its inputs and outputs are every tensor that may cross, and a request sends some and asks for some."""

    name: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    segments: tuple[int, ...] | None

    def metadata(self) -> dict:
        def describe(t: TensorInfo) -> dict:
            return {"name": t.name, "datatype": DATATYPES[t.dtype], "shape": list(t.shape)}

        meta = {"name": self.name, "versions": [MODEL_VERSION], "platform": PLATFORM,
                "inputs": [describe(t) for t in self.inputs], "outputs": [describe(t) for t in self.outputs]}
        if self.segments is None:
            meta["parameters"] = {"stage": "send any of the inputs and name the outputs wanted: the server runs the "
                                           "segments that make those from these"}
        return meta


class LoadMeter:
    """How busy the worker thread is: its busy share of a sliding window and an exponentially
    weighted mean of compute time per request. The worker writes, the event loop reads: hence the lock."""

    def __init__(self, window_s: float = 10.0, weight: float = 0.2):
        self.window_s = window_s
        self.weight = weight
        self._mean_s: float | None = None
        self._intervals: deque[tuple[float, float]] = deque()
        self._running_since: float | None = None
        self._lock = threading.Lock()

    def start(self) -> float:
        with self._lock:
            self._running_since = time.monotonic()
            return self._running_since

    def stop(self, started: float) -> float:
        with self._lock:
            ended = time.monotonic()
            self._running_since = None
            self._intervals.append((started, ended))
            seconds = ended - started
            self._mean_s = seconds if self._mean_s is None else self.weight * seconds + (1 - self.weight) * self._mean_s
            return seconds

    @property
    def mean_service_s(self) -> float:
        """0 until the first request: an idle server adds no queueing delay."""
        return self._mean_s or 0.0

    def busy_fraction(self) -> float:
        with self._lock:
            now = time.monotonic()
            since = now - self.window_s
            while self._intervals and self._intervals[0][1] <= since:
                self._intervals.popleft()
            spans = list(self._intervals)
            if self._running_since is not None:
                spans.append((self._running_since, now))
            return sum(end - max(start, since) for start, end in spans) / self.window_s


@dataclass
class Reply:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


def json_reply(payload: dict, status: int = 200, headers: dict[str, str] | None = None) -> Reply:
    return Reply(status, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})})


class HTTPError(ProtocolError):
    """A request refused before it reaches the protocol, with headers the answer must carry."""

    def __init__(self, message: str, status: int, headers: dict[str, str] | None = None):
        super().__init__(message, status)
        self.headers = headers or {}


class ClientGone(Exception):
    """The client disconnected before its request was read: there is no one to answer."""


_MODEL = r"/v2/models/(?P<model>[^/]+)(?:/versions/(?P<version>[^/]+))?"
ROUTES = [  # (path, method, handler name); paths are matched whole
    (re.compile(r"/v2/?"), "GET", "_server_metadata"),
    (re.compile(LIVE_PATH), "GET", "_live"),
    (re.compile(r"/v2/health/ready"), "GET", "_ready"),
    (re.compile(_MODEL), "GET", "_model_metadata"),
    (re.compile(_MODEL + "/ready"), "GET", "_model_ready"),
    (re.compile(_MODEL + "/infer"), "POST", "_infer"),
]


class InferenceServer:
    """ASGI application serving one bundle's server side.

    All segments are loaded (and their checksums verified) at construction, on the one worker
    thread that runs them: TVM VMs are not shared across threads, and the event loop stays free
    to answer health checks while a request computes.
    """

    def __init__(self, bundle_path: str | Path, token: str | None = None, max_body_bytes: int = 256 << 20,
                 server_name: str = "neurosurgeon", trust_key: bytes | None = None):
        self.bundle = Bundle(bundle_path, trust_key=trust_key)
        self.token = token
        self.max_body_bytes = max_body_bytes
        self.server_name = server_name
        self.graph = TensorGraph.of_bundle(self.bundle)
        self.models = served_models(self.bundle)
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="neurosurgeon-worker")
        try:
            self._executor = self._worker.submit(self._load_segments).result()
        except BaseException:
            self._worker.shutdown()
            raise
        self._meter = LoadMeter()
        self._load_model = read_load_model(self.bundle)
        self._pending = 0  # requests handed to the worker and not answered yet; only the event loop touches it

    def _load_segments(self) -> SegmentExecutor:
        executor = SegmentExecutor(self.bundle, "server")
        for index in range(len(self.bundle.segments)):
            executor.load(index)
        return executor

    def load(self) -> dict:
        """The server's current load, as every answer reports it, with the queueing wait a new
        request should expect (cost_models/server_load.py: wait = alpha * queue * mean_service + beta)."""
        mean = self._meter.mean_service_s
        alpha, beta = self._load_model
        return {"queue_length": self._pending, "busy_fraction": round(self._meter.busy_fraction(), 4),
                "mean_service_s": mean, "expected_wait_s": round(alpha * self._pending * mean + beta, 6)}

    def close(self) -> None:
        self._worker.shutdown(wait=True, cancel_futures=True)

    # --- ASGI ----------------------------------------------------------------------------------

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)

    async def _lifespan(self, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope, receive, send) -> None:
        authorized = self._authorized(scope)
        try:
            if not authorized and scope["path"] != LIVE_PATH:
                raise self._unauthorized(scope)
            reply = await self._dispatch(scope, receive)
        except ClientGone:
            return
        except HTTPError as err:
            reply = json_reply({"error": str(err)}, err.status, err.headers)
        except ProtocolError as err:
            reply = json_reply({"error": str(err)}, err.status)
        except Exception as err:
            log.exception("%s %s failed", scope["method"], scope["path"])
            reply = json_reply({"error": f"internal server error ({type(err).__name__}); see the server log"}, 500)
        if authorized:  # the load is only told to those allowed to use the server
            reply.headers[LOAD_HEADER] = json.dumps(self.load(), separators=(",", ":"))
        await send({"type": "http.response.start", "status": reply.status,
                    "headers": [(b"content-length", str(len(reply.body)).encode())]
                    + [(k.lower().encode(), v.encode()) for k, v in reply.headers.items()]})
        await send({"type": "http.response.body", "body": reply.body})

    async def _dispatch(self, scope, receive) -> Reply:
        path, method = scope["path"], scope["method"]
        for pattern, expected, handler in ROUTES:
            match = pattern.fullmatch(path)
            if match:
                if method != expected:
                    raise HTTPError(f"{path} takes {expected}, not {method}", 405, {"Allow": expected})
                return await getattr(self, handler)(match, scope, receive)
        raise HTTPError(f"no endpoint {path}: this server speaks Open Inference Protocol v2 (/v2/...)", 404)

    # --- authentication ------------------------------------------------------------------------

    def _authorized(self, scope) -> bool:
        return self.token is None or token_matches(header(scope, "authorization"), self.token)

    def _unauthorized(self, scope) -> HTTPError:
        if header(scope, "authorization") is None:
            return HTTPError("this server requires an `Authorization: Bearer <token>` header", 401,
                             {"WWW-Authenticate": 'Bearer realm="neurosurgeon"'})
        return HTTPError("invalid bearer token", 401,
                         {"WWW-Authenticate": 'Bearer realm="neurosurgeon", error="invalid_token"'})

    # --- endpoints -----------------------------------------------------------------------------

    async def _server_metadata(self, match, scope, receive) -> Reply:
        return json_reply({"name": self.server_name, "version": _version(), "extensions": ["binary_tensor_data"],
                           "bundle": {"name": self.bundle.name, "id": self.bundle.bundle_id,
                                      "segments": len(self.bundle.segments)}})

    async def _live(self, match, scope, receive) -> Reply:
        return json_reply({"live": True})

    async def _ready(self, match, scope, receive) -> Reply:
        return json_reply({"ready": True, "load": self.load()})

    async def _model_metadata(self, match, scope, receive) -> Reply:
        return json_reply(self._model(match).metadata())

    async def _model_ready(self, match, scope, receive) -> Reply:
        return json_reply({"name": self._model(match).name, "ready": True})

    async def _infer(self, match, scope, receive) -> Reply:
        model = self._model(match)
        encoding = header(scope, "content-encoding")
        if encoding not in (None, "identity"):
            raise HTTPError(f"Content-Encoding {encoding!r} is not supported; send the body uncompressed", 415)
        body = await self._read_body(scope, receive)
        received = time.perf_counter()  # from here on the request is in the server, not on the network
        inputs, requested, parameters = decode_infer_request(body, parse_header_length(header(scope, HEADER_LENGTH)))
        check_inputs(model, inputs)
        wanted = requested_outputs(model, requested, parameters)
        segments = model.segments
        if segments is None:
            try:
                segments = self.graph.stage(inputs, list(wanted))
            except StageError as err:
                raise ProtocolError(f"model {model.name!r}: {err}") from None
        self._pending += 1
        try:
            outputs, compute_s = await asyncio.get_running_loop().run_in_executor(
                self._worker, self._compute, segments, inputs, list(wanted))
        finally:
            self._pending -= 1
        answer = {**self.load(), "compute_s": compute_s, "server_s": round(time.perf_counter() - received, 6),
                  "server_segments": len(segments)}
        body, headers = encode_infer_response(model.name, {name: outputs[name] for name in wanted},
                                              {name for name, binary in wanted.items() if binary},
                                              parameters=answer, model_version=MODEL_VERSION)
        return Reply(200, body, headers)

    def _compute(self, segments, inputs: dict[str, np.ndarray], wanted: list[str]) -> tuple[dict[str, np.ndarray], float]:
        """Runs on the worker thread."""
        started = self._meter.start()
        try:
            env = self._executor.run(dict(inputs), segments)
            outputs = {name: fetch(env[name]) for name in wanted}
        finally:
            compute_s = self._meter.stop(started)
        return outputs, compute_s

    def _model(self, match: re.Match) -> ServedModel:
        name, version = match["model"], match["version"]
        model = self.models.get(name)
        if model is None:
            cuts = sorted(m.name for m in self.models.values() if parse_cut_model_name(self.bundle.name, m.name) is not None)
            raise ProtocolError(f"unknown model {name!r}: this server serves {self.bundle.name!r} (the whole model), "
                                f"{stage_model_name(self.bundle.name)!r} (any stage) and the cut models "
                                f"{cuts[0]!r}..{cuts[-1]!r}", 404)
        if version is not None and version != MODEL_VERSION:
            raise ProtocolError(f"model {name!r} has no version {version!r} (versions: {MODEL_VERSION})", 404)
        return model

    async def _read_body(self, scope, receive) -> bytes:
        """The request body, refused with 413 as soon as it is known to exceed the limit: from
        Content-Length before reading anything, else while it streams in."""
        declared = header(scope, "content-length")
        if declared is not None:
            if not declared.isdigit():
                raise ProtocolError(f"Content-Length must be a non-negative integer, got {declared!r}")
            if int(declared) > self.max_body_bytes:
                raise self._too_large(f"{int(declared)} bytes")
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise self._too_large(f"more than {self.max_body_bytes} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _too_large(self, size: str) -> HTTPError:
        # Close the connection: the rest of the body is never read, so it cannot carry another request.
        return HTTPError(f"request body of {size} exceeds this server's limit of {self.max_body_bytes} bytes", 413,
                         {"Connection": "close"})


def read_load_model(bundle: Bundle) -> tuple[float, float]:
    """(alpha, beta) fitted by `neurosurgeon profile --server-load`, or a single FIFO worker's (1, 0)."""
    path = bundle.path / LOAD_MODEL_FILE
    if not path.is_file():
        return 1.0, 0.0
    model = LOAD_MODEL_FORMAT.read(path)
    try:
        return float(model["alpha"]), float(model["beta"])
    except (ValueError, KeyError, TypeError) as err:
        raise BundleError(f"{path}: malformed server load model ({err})") from None


def served_models(bundle: Bundle) -> dict[str, ServedModel]:
    """The stage model, one model per cut that leaves work for the server, and the bundle's name for the
    whole model."""
    outputs = {t.name: t for t in bundle.outputs}
    n = len(bundle.segments)
    models = {}
    for cut in bundle.cuts[:n]:  # cut S runs nothing here
        name = cut_model_name(bundle.name, cut.index)
        models[name] = ServedModel(name, cut.crossing, tuple(outputs[o] for o in cut.server_outputs),
                                   tuple(range(cut.index, n)))
    models[bundle.name] = replace(models[cut_model_name(bundle.name, 0)], name=bundle.name)
    tensors = {t.name: t for t in [*bundle.inputs, *(t for s in bundle.segments for t in s.outputs)]}
    made = [t for name, t in tensors.items() if name not in {i.name for i in bundle.inputs}]
    stage = stage_model_name(bundle.name)
    models[stage] = ServedModel(stage, tuple(tensors.values()), tuple(made), None)
    return models


def check_inputs(model: ServedModel, inputs: dict[str, np.ndarray]) -> None:
    expected = {t.name: t for t in model.inputs}
    missing = [n for n in expected if n not in inputs] if model.segments is not None else []
    unexpected = [n for n in inputs if n not in expected]
    if missing or unexpected:
        problems = [f"missing input {n!r}" for n in missing] + [f"unexpected input {n!r}" for n in unexpected]
        raise ProtocolError(f"model {model.name!r}: {', '.join(problems)} (it takes {', '.join(expected)})")
    for name, info in expected.items():
        if name not in inputs:
            continue
        array = inputs[name]
        if array.dtype != np.dtype(info.dtype):
            raise ProtocolError(f"input {name!r}: expected datatype {DATATYPES[info.dtype]}, "
                                f"got {DATATYPES[array.dtype.name]}")
        if array.shape != info.shape:
            raise ProtocolError(f"input {name!r}: expected shape {list(info.shape)}, got {list(array.shape)}")


def requested_outputs(model: ServedModel, requested: dict[str, bool], parameters: dict) -> dict[str, bool]:
    """Output name -> send as binary. Nothing requested means every output, binary only when the
    request says `binary_data_output` (the protocol's default is JSON); the stage model needs names."""
    if not requested and model.segments is None:
        raise ProtocolError(f"model {model.name!r} runs any stage: name the outputs wanted back")
    if not requested:
        binary = bool(parameters.get("binary_data_output", False))
        return {t.name: binary for t in model.outputs}
    names = [t.name for t in model.outputs]
    unknown = [n for n in requested if n not in names]
    if unknown:
        raise ProtocolError(f"model {model.name!r} has no output {', '.join(map(repr, unknown))} "
                            f"(its outputs: {', '.join(names)})")
    return requested


def header(scope, name: str) -> str | None:
    key = name.lower().encode()
    for k, v in scope["headers"]:
        if k == key:
            return v.decode("latin-1")
    return None


def _version() -> str:
    try:
        return version("neurosurgeon")
    except PackageNotFoundError:  # runtime/ copied next to a bundle, without the package
        return "unknown"
