"""Property-based fuzzing of the Open Inference Protocol side: the decoder, and the server as an ASGI
application fed random and mutated requests (bodies, headers, lengths, dtypes, shapes, paths).

The promise under test: every answer is a correct 200 or a 4xx with a one-line JSON reason, never a
500 or a crash, and the server keeps serving correct answers afterwards.
"""

from __future__ import annotations

import asyncio
import json
import socket

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, event, example, given, settings
from hypothesis import strategies as st
from neurosurgeon.runtime.bundle import Bundle
from neurosurgeon.runtime.protocol import (
    DATATYPES,
    HEADER_LENGTH,
    ProtocolError,
    cut_model_name,
    decode_infer_request,
    decode_infer_response,
    encode_infer_request,
    parse_header_length,
    stage_model_name,
)
from neurosurgeon.runtime.server import InferenceServer
from neurosurgeon.runtime.tensors import random_inputs
from neurosurgeon.serving import start_server
from neurosurgeon.tools import zoo
from neurosurgeon.tools.verify import reference_outputs

from neurosurgeon.api import CompileOptions
from neurosurgeon.api import compile as compile_model

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                       HealthCheck.function_scoped_fixture])
TOKEN = "fuzz-token"


def one_line(message: str) -> None:
    assert message and "\n" not in message.strip(), f"not a one-line reason: {message!r}"


# --- strategies --------------------------------------------------------------------------------

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                         st.text(max_size=8))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                                st.dictionaries(st.text(max_size=6), inner, max_size=4)),
                           max_leaves=12)
datatypes = st.one_of(st.sampled_from([*DATATYPES.values(), "BYTES"]), st.text(max_size=6), json_scalars)
shapes = st.one_of(st.lists(st.integers(-2, 6), max_size=4), st.lists(st.integers(0, 2**40), max_size=3), json_values)
# nested lists of mixed depth: ragged, empty, wrong element types
data_values = st.recursive(st.one_of(st.integers(-300, 300), st.floats(allow_nan=True), st.booleans(),
                                     st.text(max_size=2), st.none()),
                           lambda inner: st.lists(inner, max_size=5), max_leaves=30)


@st.composite
def tensor_entries(draw):
    entry = {}
    if draw(st.booleans()):
        entry["name"] = draw(st.one_of(st.sampled_from(["input", "x", "output", ""]), json_scalars))
    if draw(st.integers(0, 9)):
        entry["datatype"] = draw(datatypes)
    if draw(st.integers(0, 9)):
        entry["shape"] = draw(shapes)
    choice = draw(st.integers(0, 3))
    if choice == 0:
        entry["data"] = draw(data_values)
    elif choice == 1:
        entry["parameters"] = {"binary_data_size": draw(st.one_of(st.integers(-4, 64), json_scalars))}
    elif choice == 2:
        entry["parameters"] = draw(json_values)
    return entry


@st.composite
def request_bodies(draw):
    """(body, Inference-Header-Content-Length value or None): a JSON header of random tensors and
    outputs, then random binary bytes."""
    header = {}
    if draw(st.integers(0, 9)):
        header["inputs"] = draw(st.one_of(st.lists(tensor_entries(), max_size=3), json_values))
    if draw(st.booleans()):
        header["outputs"] = draw(st.one_of(st.lists(st.fixed_dictionaries(
            {"name": st.one_of(st.text(max_size=6), json_scalars)},
            optional={"parameters": st.one_of(st.fixed_dictionaries({"binary_data": json_scalars}), json_values)}),
            max_size=3), json_values))
    if draw(st.booleans()):
        header["parameters"] = draw(st.one_of(st.fixed_dictionaries({"binary_data_output": json_scalars}), json_values))
    text = json.dumps(header).encode()
    tail = draw(st.binary(max_size=64))
    length = draw(st.one_of(st.none(), st.just(len(text)), st.integers(0, len(text) + len(tail) + 4)))
    return text + tail, length


def mutate(body: bytes, draw) -> bytes:
    """A valid body with bytes flipped, cut, inserted or repeated."""
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["flip", "flip", "flip", "truncate", "insert", "repeat"]))
        at = draw(st.integers(0, max(len(body) - 1, 0)))
        if kind == "flip" and body:
            body = body[:at] + bytes([body[at] ^ (1 << draw(st.integers(0, 7)))]) + body[at + 1:]
        elif kind == "truncate":
            body = body[:at]
        elif kind == "insert":
            body = body[:at] + draw(st.binary(min_size=1, max_size=8)) + body[at:]
        else:
            body = body[:at] + body[at:at + draw(st.integers(1, 16))] * 2 + body[at + 16:]
    return body


# --- the decoder alone -------------------------------------------------------------------------


@FUZZ
@given(request_bodies())
@example((b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [[1.0], 2.0]}]}', None))
@example((b'[' * 100_000, None))
@example((b'{"inputs": [{"name": "x", "datatype": "UINT8", "shape": [1], "data": [256]}]}', None))
def test_the_decoder_answers_anything_with_tensors_or_a_one_line_protocol_error(case):
    body, length = case
    try:
        inputs, requested, parameters = decode_infer_request(body, length)
    except ProtocolError as err:
        one_line(str(err))
        assert 400 <= err.status < 500
        return
    assert inputs and all(isinstance(a, np.ndarray) and a.dtype.name in DATATYPES for a in inputs.values())
    assert all(isinstance(v, bool) for v in requested.values()) and isinstance(parameters, dict)


@FUZZ
@given(st.one_of(st.none(), st.text(max_size=12)))
@example("-1")
@example("1e3")
@example("٣")  # a digit to str.isdigit, not to the protocol
def test_header_length_is_a_non_negative_integer_or_a_protocol_error(value):
    try:
        length = parse_header_length(value)
    except ProtocolError as err:
        one_line(str(err))
        return
    assert length is None if value is None else (isinstance(length, int) and length >= 0)


@FUZZ
@given(st.data())
def test_encode_then_decode_gives_back_every_tensor(data):
    dtype = data.draw(st.sampled_from(sorted(DATATYPES)))
    shape = data.draw(st.lists(st.integers(0, 4), max_size=3))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    array = (rng.standard_normal(shape) * 100).astype(dtype) if dtype != "bool" else rng.random(shape) > 0.5
    binary = data.draw(st.booleans())
    body, headers = encode_infer_request({"t": array}, binary=binary)
    inputs, _, _ = decode_infer_request(body, parse_header_length(headers.get(HEADER_LENGTH)))
    assert inputs["t"].dtype == array.dtype and inputs["t"].shape == array.shape
    np.testing.assert_array_equal(inputs["t"], array)


# --- the server as an ASGI application -----------------------------------------------------------


class Asgi:
    """Calls an ASGI application in this process: one request, its body in chunks, optionally a
    client that goes away after `disconnect_after` chunks."""

    def __init__(self, app):
        self.app = app
        self.loop = asyncio.new_event_loop()

    def close(self) -> None:
        self.loop.close()

    def __call__(self, method: str, path: str, headers: list[tuple[bytes, bytes]], chunks: list[bytes],
                 disconnect_after: int | None = None) -> tuple[int | None, dict, bytes]:
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
                 "scheme": "http", "path": path, "raw_path": path.encode("utf-8", "surrogateescape"),
                 "query_string": b"", "headers": headers, "client": ("127.0.0.1", 50000),
                 "server": ("127.0.0.1", 8000)}
        messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
        if disconnect_after is not None:
            messages = messages[:disconnect_after]
        sent = []

        async def receive():
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)

        self.loop.run_until_complete(self.app(scope, receive, send))
        if not sent:
            return None, {}, b""
        start = sent[0]
        assert start["type"] == "http.response.start"
        headers = {k.decode(): v.decode() for k, v in start["headers"]}
        body = b"".join(m.get("body", b"") for m in sent[1:])
        assert int(headers["content-length"]) == len(body)
        return start["status"], headers, body


@pytest.fixture(scope="module")
def lenet(tmp_path_factory):
    model = zoo.build("lenet", width=0.25)
    path = tmp_path_factory.mktemp("fuzz") / "lenet.bundle"
    compile_model(model, path, CompileOptions("x86-host", "x86-host", progress=False))
    bundle = Bundle(path)
    feeds = random_inputs(bundle.inputs, seed=3)
    return path, model, bundle, feeds, reference_outputs(model, feeds)


@pytest.fixture(scope="module")
def asgi(lenet):
    server = InferenceServer(lenet[0], token=TOKEN, max_body_bytes=64 << 10)
    call = Asgi(server)
    yield call
    call.close()
    server.close()


def auth() -> tuple[bytes, bytes]:
    return (b"authorization", f"Bearer {TOKEN}".encode())


def is_ok(status: int | None, body: bytes) -> bool:
    """True for a 200; otherwise asserts a 4xx with a one-line JSON reason."""
    event(f"status {status}")
    assert status is not None and status < 500, body
    if status >= 400:
        one_line(json.loads(body)["error"])
    return status == 200


def assert_still_serving(asgi, lenet):
    _, _, bundle, feeds, reference = lenet
    body, headers = encode_infer_request(feeds)
    status, answer_headers, answer = asgi("POST", f"/v2/models/{bundle.name}/infer",
                                          [auth(), *((k.lower().encode(), v.encode()) for k, v in headers.items())],
                                          [body])
    assert status == 200
    outputs, _ = decode_infer_response(answer, parse_header_length(answer_headers.get(HEADER_LENGTH.lower())))
    np.testing.assert_allclose(outputs["output"], reference["output"], rtol=1e-4, atol=1e-5)


def model_paths(name: str):
    return st.one_of(
        st.sampled_from([f"/v2/models/{m}/infer" for m in (name, stage_model_name(name), cut_model_name(name, 1),
                                                          cut_model_name(name, 99), "other")]),
        st.sampled_from(["/v2", "/v2/health/live", "/v2/health/ready", f"/v2/models/{name}",
                         f"/v2/models/{name}/ready", f"/v2/models/{name}/versions/1/infer",
                         f"/v2/models/{name}/versions/2/infer", "/", "/v2/models//infer"]),
        st.text(max_size=20).map(lambda s: "/" + s))


@FUZZ
@given(st.data())
def test_the_server_answers_random_requests_with_200_or_a_one_line_4xx(asgi, lenet, data):
    name = lenet[2].name
    body, length = data.draw(request_bodies())
    # hypothesis favours small integers: the common case is 0
    headers = [auth()] if data.draw(st.integers(0, 9)) < 9 else data.draw(st.sampled_from(
        [[], [(b"authorization", b"Bearer wrong")], [(b"authorization", b"\xff\xfe")]]))
    if length is not None:
        headers.append((HEADER_LENGTH.lower().encode(), data.draw(st.sampled_from([str(length), f"-{length}", "x",
                                                                                  "", str(length) + " "])).encode()))
    if data.draw(st.booleans()):
        headers.append((b"content-length", data.draw(st.sampled_from([str(len(body)), "abc", "-1", "99999999999",
                                                                      "0"])).encode()))
    if data.draw(st.integers(0, 9)) == 9:
        headers.append((b"content-encoding", data.draw(st.sampled_from([b"gzip", b"identity", b"\x00"]))))
    method = "POST" if data.draw(st.integers(0, 9)) < 9 else data.draw(st.sampled_from(["GET", "PUT", "DELETE"]))
    cut = data.draw(st.integers(1, 4))
    chunks = [body[i * len(body) // cut:(i + 1) * len(body) // cut] for i in range(cut)]
    path = f"/v2/models/{name}/infer" if data.draw(st.integers(0, 2)) < 2 else data.draw(model_paths(name))
    status, _, answer = asgi(method, path, headers, chunks)
    is_ok(status, answer)
    assert_still_serving(asgi, lenet)


@FUZZ
@given(st.data())
def test_the_server_answers_mutated_valid_requests_correctly_or_with_a_one_line_4xx(asgi, lenet, data):
    _, model, bundle, feeds, _ = lenet
    binary = data.draw(st.booleans())
    body, headers = encode_infer_request(feeds, outputs=data.draw(st.sampled_from([None, ["output"]])), binary=binary)
    start = int(headers.get(HEADER_LENGTH, 0))
    if data.draw(st.booleans()) and start:  # bits flipped in the tensor bytes only: the answer must be a 200
        at = data.draw(st.integers(start, len(body) - 1))
        mutated = body[:at] + bytes([body[at] ^ (1 << data.draw(st.integers(0, 7)))]) + body[at + 1:]
    else:
        mutated = mutate(body, data.draw)
    assume(mutated != body)
    sent = [auth()] + [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    status, answer_headers, answer = asgi("POST", f"/v2/models/{bundle.name}/infer", sent, [mutated])
    if is_ok(status, answer):
        # a 200: the answer is the model's on the tensors the server read (flipped bits change them)
        inputs, _, _ = decode_infer_request(mutated, parse_header_length(headers.get(HEADER_LENGTH)))
        outputs, _ = decode_infer_response(answer, parse_header_length(answer_headers.get(HEADER_LENGTH.lower())))
        if all(np.isfinite(a).all() and np.abs(a).max() < 1e3 for a in inputs.values()):
            reference = reference_outputs(model, inputs)
            np.testing.assert_allclose(outputs["output"], reference["output"], rtol=1e-4, atol=1e-5)
    assert_still_serving(asgi, lenet)


@FUZZ
@given(st.data())
def test_a_client_that_goes_away_mid_upload_gets_nothing_and_breaks_nothing(asgi, lenet, data):
    _, _, bundle, feeds, _ = lenet
    body, headers = encode_infer_request(feeds)
    pieces = data.draw(st.integers(2, 6))
    chunks = [body[i * len(body) // pieces:(i + 1) * len(body) // pieces] for i in range(pieces)]
    status, _, _ = asgi("POST", f"/v2/models/{bundle.name}/infer",
                        [auth()] + [(k.lower().encode(), v.encode()) for k, v in headers.items()], chunks,
                        disconnect_after=data.draw(st.integers(0, pieces - 1)))
    assert status is None  # nobody to answer
    assert_still_serving(asgi, lenet)


# --- the same over a real socket: malformed HTTP reaches uvicorn's parser first --------------------


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_the_real_server_survives_malformed_http(lenet, served, data):
    host, port = served
    name = lenet[2].name
    body, headers = encode_infer_request(lenet[3])
    request = (f"POST /v2/models/{name}/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
               + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode() + body
    raw = data.draw(st.one_of(st.binary(max_size=300), st.builds(lambda d: mutate(request, d.draw), st.data())))
    with socket.create_connection((host, port), timeout=10) as sock:
        try:
            sock.sendall(raw)
            sock.shutdown(socket.SHUT_WR)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        except (ConnectionResetError, BrokenPipeError):
            answer = b""
    if answer:
        status = int(answer.split(b" ", 2)[1])
        assert status < 500, answer[:300]
    with socket.create_connection((host, port), timeout=10) as sock:  # and the next device is served
        sock.sendall(request)
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer) < answer.index(b"\r\n\r\n") + 20:
            answer += sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200"), answer[:300]


@pytest.fixture(scope="module")
def served(lenet):
    with start_server(lenet[0]) as server:
        host, port = server.url.removeprefix("http://").rsplit(":", 1)
        yield host, int(port)
