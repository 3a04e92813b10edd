"""The server half: a model repository's bundles behind the Open Inference Protocol v2 (KServe, Triton).

A plain ASGI 3 application (run it under any ASGI server: `neurosurgeon serve` uses uvicorn, and
`--engine ray` Ray Serve). What is served, and by which workers, is runtime/repository.py; this
module is HTTP: routes, authentication, body limits, errors as one-line JSON reasons, metrics.

Endpoints: server metadata, health, model metadata and readiness, infer, Triton's repository index
(`POST /v2/repository/index`) and Prometheus metrics (`GET /metrics`). The server keeps nothing
between requests. Every answer to an authorised client carries the load of the bundle it asked
(queue length, workers, busy share, mean service time, expected wait), which the mobile side's
planner feeds on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import zlib
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from .auth import token_matches
from .metrics import CONTENT_TYPE, Counter, Gauge, Histogram, Registry
from .codec import CODECS
from .protocol import (
    CONTENT_ENCODING,
    HEADER_LENGTH,
    LOAD_HEADER,
    SEGMENT_TIMES,
    ProtocolError,
    decode_infer_request,
    encode_infer_response,
    parse_header_length,
)
from .repository import MODEL_VERSION, Repository, ServedBundle, ServeOptions

__all__ = ["InferenceServer"]

log = logging.getLogger("neurosurgeon.server")

LIVE_PATH = "/v2/health/live"
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


@dataclass
class Reply:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    load: dict | None = None  # the load to report: the bundle's for model endpoints, else the server's


def json_reply(payload, status: int = 200, headers: dict[str, str] | None = None, load: dict | None = None) -> Reply:
    return Reply(status, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})}, load)


class HTTPError(ProtocolError):
    """A request refused before it reaches the protocol, with headers the answer must carry."""

    def __init__(self, message: str, status: int, headers: dict[str, str] | None = None):
        super().__init__(message, status)
        self.headers = headers or {}


# Content-Encodings of a whole request body this server inflates (Triton's HTTP endpoint takes the same)
BODY_ENCODINGS = ("identity", "gzip", "deflate")


class ClientGone(Exception):
    """The client disconnected before its request was read: there is no one to answer."""


_MODEL = r"/v2/models/(?P<model>[^/]+)(?:/versions/(?P<version>[^/]+))?"
ROUTES = [  # (path, method, handler name); paths are matched whole
    (re.compile(r"/v2/?"), "GET", "_server_metadata"),
    (re.compile(LIVE_PATH), "GET", "_live"),
    (re.compile(r"/v2/health/ready"), "GET", "_ready"),
    (re.compile(r"/v2/repository/index"), "POST", "_repository_index"),
    (re.compile(r"/metrics"), "GET", "_metrics"),
    (re.compile(_MODEL), "GET", "_model_metadata"),
    (re.compile(_MODEL + "/ready"), "GET", "_model_ready"),
    (re.compile(_MODEL + "/infer"), "POST", "_infer"),
]


class ServerMetrics:
    """What `/metrics` exports, as Triton's metrics do: requests by model, segments run and status,
    latency and compute histograms, queue length, workers, batch sizes, bytes in and out."""

    def __init__(self):
        self.registry = Registry()
        add = self.registry.add
        self.requests = add(Counter("neurosurgeon_inference_requests_total", "Inference requests answered, by model, "
                                    "the segments they ran (first-last) and HTTP status",
                                    ("model", "segments", "status")))
        self.latency = add(Histogram("neurosurgeon_inference_request_duration_seconds", "Time from a request's "
                                     "body received to its answer ready, queueing included", ("model",)))
        self.compute = add(Histogram("neurosurgeon_inference_compute_duration_seconds", "Time a worker computed a "
                                     "request (its share of a batch)", ("bundle",)))
        self.batch = add(Histogram("neurosurgeon_inference_batch_size", "Requests a worker ran together",
                                   ("bundle",), buckets=BATCH_BUCKETS))
        self.received = add(Counter("neurosurgeon_inference_received_bytes_total", "Request body bytes", ("model",)))
        self.sent = add(Counter("neurosurgeon_inference_sent_bytes_total", "Answer body bytes", ("model",)))
        self.queue = add(Gauge("neurosurgeon_inference_queue_length", "Requests queued or running", ("bundle",)))
        self.workers = add(Gauge("neurosurgeon_workers", "Worker threads", ("bundle",)))
        self.busy = add(Gauge("neurosurgeon_workers_busy_fraction", "Mean share of the last 10 s the workers "
                              "computed", ("bundle",)))

    def render(self, repository: Repository) -> bytes:
        for name, served in repository.bundles.items():
            load = served.load()
            self.queue.set(load["queue_length"], bundle=name)
            self.workers.set(load["workers"], bundle=name)
            self.busy.set(load["busy_fraction"], bundle=name)
        return self.registry.render()


class InferenceServer:
    """ASGI application serving a repository: a bundle folder, or a folder of bundles.

    Every bundle's segments are loaded (and their checksums verified) at construction, on each of
    its worker threads: TVM VMs are not shared across threads, and the event loop stays free to
    answer health checks while requests compute.
    """

    def __init__(self, path: str | Path, token: str | None = None, max_body_bytes: int = 256 << 20,
                 server_name: str = "neurosurgeon", trust_key: bytes | None = None,
                 options: ServeOptions | None = None):
        self.repository = Repository(path, options, trust_key=trust_key)
        self.token = token
        self.max_body_bytes = max_body_bytes
        self.server_name = server_name
        self.metrics = ServerMetrics()

    def close(self) -> None:
        self.repository.close()

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
            load = reply.load if reply.load is not None else self.repository.load()
            reply.headers[LOAD_HEADER] = json.dumps(load, separators=(",", ":"))
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
                    raise HTTPError(f"{path!r} takes {expected}, not {method!r}", 405, {"Allow": expected})
                return await getattr(self, handler)(match, scope, receive)
        raise HTTPError(f"no endpoint {path!r}: this server speaks Open Inference Protocol v2 (/v2/...)", 404)

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
        return json_reply({"name": self.server_name, "version": _version(), "extensions": ["binary_tensor_data",
                                                                                           "model_repository"],
                           "bundles": [{"name": b.name, "id": b.bundle.bundle_id, "segments": len(b.bundle.segments),
                                        "workers": b.pool.workers,
                                        "batch_sizes": list(b.pool.batching.sizes) if b.pool.batching else [1],
                                        "max_queue_delay_s": b.pool.batching.max_queue_delay_s if b.pool.batching
                                        else 0.0} for b in self.repository.bundles.values()],
                           "failed": self.repository.failed,
                           # binary input tensors may come coded: parameter content_encoding names one of these
                           "parameters": {CONTENT_ENCODING: list(CODECS)}})

    async def _live(self, match, scope, receive) -> Reply:
        return json_reply({"live": True})

    async def _ready(self, match, scope, receive) -> Reply:
        return json_reply({"ready": True, "load": self.repository.load()})

    async def _repository_index(self, match, scope, receive) -> Reply:
        body = await self._read_body(scope, receive)
        try:
            ready_only = bool(json.loads(body or b"{}").get("ready", False))
        except (json.JSONDecodeError, AttributeError, RecursionError):
            raise ProtocolError("the repository index request body must be a JSON object, e.g. {\"ready\": true}") \
                from None
        entries = self.repository.index()
        return json_reply([e for e in entries if e["state"] == "READY"] if ready_only else entries)

    async def _metrics(self, match, scope, receive) -> Reply:
        return Reply(200, self.metrics.render(self.repository), {"Content-Type": CONTENT_TYPE})

    async def _model_metadata(self, match, scope, receive) -> Reply:
        served, model = self.repository.model(match["model"], match["version"])
        return json_reply(model.metadata(), load=served.load())

    async def _model_ready(self, match, scope, receive) -> Reply:
        served, model = self.repository.model(match["model"], match["version"])
        return json_reply({"name": model.name, "ready": True, "load": served.load()}, load=served.load())

    async def _infer(self, match, scope, receive) -> Reply:
        name = match["model"]
        segments = ""
        status = 500
        received_bytes = sent_bytes = 0
        try:
            served, model = self.repository.model(name, match["version"])
            encoding = (header(scope, "content-encoding") or "identity").strip().lower()
            if encoding not in BODY_ENCODINGS:
                raise HTTPError(f"Content-Encoding {encoding!r} is not supported; send the body as "
                                f"{', '.join(BODY_ENCODINGS)}", 415)
            body = await self._read_body(scope, receive)
            received_bytes = len(body)
            if encoding != "identity":
                body = self._inflate(body, encoding)
            received = time.perf_counter()  # from here on the request is in the server, not on the network
            inputs, requested, parameters = decode_infer_request(body, parse_header_length(header(scope, HEADER_LENGTH)))
            model.check_inputs(inputs)
            wanted = model.requested_outputs(requested, parameters)
            job = served.job(model, inputs, list(wanted))
            segments = f"{job.segments[0]}-{job.segments[-1]}" if job.segments else "none"
            outputs, compute_s, batch = await asyncio.wrap_future(served.pool.submit(job))
            answer = {**served.load(), "compute_s": compute_s, "server_s": round(time.perf_counter() - received, 6),
                      "server_segments": len(job.segments), "batch_size": batch}
            if parameters.get(SEGMENT_TIMES) is True:  # the server's own time per segment, for the planner
                answer["segment_s"] = served.pool.segment_times.snapshot()
            body, headers = encode_infer_response(model.name, {n: outputs[n] for n in wanted},
                                                  {n for n, binary in wanted.items() if binary},
                                                  parameters=answer, model_version=MODEL_VERSION)
            self._observe(name, served, received, compute_s, batch)
            status, sent_bytes = 200, len(body)
            return Reply(200, body, headers, served.load())
        except ProtocolError as err:
            status = err.status
            raise
        except ClientGone:
            status = 499  # as nginx counts a client that closed the connection before its answer
            raise
        finally:
            if name in self.repository.models:  # unknown names would let clients grow the label set
                self.metrics.requests.inc(model=name, segments=segments, status=str(status))
                self.metrics.received.inc(received_bytes, model=name)
                self.metrics.sent.inc(sent_bytes, model=name)

    def _observe(self, name: str, served: ServedBundle, received: float, compute_s: float, batch: int) -> None:
        self.metrics.latency.observe(time.perf_counter() - received, model=name)
        self.metrics.compute.observe(compute_s, bundle=served.name)
        self.metrics.batch.observe(batch, bundle=served.name)

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

    def _inflate(self, body: bytes, encoding: str) -> bytes:
        """A gzip- or deflate-coded body (tritonclient's request_compression_algorithm), inflated up to
        the body limit: a small body that inflates past it is refused like a large one."""
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
        try:
            plain = inflater.decompress(body, self.max_body_bytes + 1)
        except zlib.error as err:
            raise ProtocolError(f"request body is not valid {encoding} data ({err})") from None
        if len(plain) > self.max_body_bytes or inflater.unconsumed_tail:
            raise self._too_large(f"more than {self.max_body_bytes} bytes inflated")
        if not inflater.eof:
            raise ProtocolError(f"request body is truncated {encoding} data")
        return plain

    def _too_large(self, size: str) -> HTTPError:
        # Close the connection: the rest of the body is never read, so it cannot carry another request.
        return HTTPError(f"request body of {size} exceeds this server's limit of {self.max_body_bytes} bytes", 413,
                         {"Connection": "close"})


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
