"""The inference server over real sockets: a `neurosurgeon.serve` process per fixture, spoken to
with our own protocol code, with raw HTTP, and with Triton's unmodified client."""

from __future__ import annotations

import gzip
import http.client
import json
import zlib
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from neurosurgeon.tools import zoo
from neurosurgeon.api import CompileOptions
from neurosurgeon.api import compile as compile_model
from neurosurgeon.runtime.tensors import random_inputs
from neurosurgeon.tools.verify import reference_outputs
from neurosurgeon.runtime.bundle import Bundle, SegmentExecutor, fetch
from neurosurgeon.runtime.protocol import (DATATYPES, HEADER_LENGTH, ProtocolError, cut_model_name,
                                           decode_infer_request, decode_infer_response, encode_infer_request,
                                           encode_infer_response, parse_cut_model_name)
from neurosurgeon.runtime.protocol import LOAD_HEADER
from neurosurgeon.serving import start_server

RTOL, ATOL = 1e-4, 1e-5
TOKEN = "s3cret-token"
BODY_LIMIT = 4096  # lenet's input (3136 bytes) fits, the tensor crossing its cut 1 (11520 bytes) does not


# --- fixtures: two small bundles, three servers --------------------------------------------------


class Compiled:
    """A bundle with its model, inputs and onnxruntime's outputs for them."""

    def __init__(self, tmp_path_factory, name: str, **shape):
        model = zoo.build(name, **shape)
        self.path = tmp_path_factory.mktemp(name) / f"{name}.bundle"
        compile_model(model, self.path, CompileOptions("x86-host", "x86-host", progress=False, partitioner="fused-layers"))
        self.bundle = Bundle(self.path)
        self.feeds = random_inputs(self.bundle.inputs)
        self.reference = reference_outputs(model, self.feeds)

    def mobile_side(self, cut: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """What the mobile side holds at `cut`: (tensors it uploads, model outputs it computed itself)."""
        env = SegmentExecutor(self.bundle, "mobile").run(dict(self.feeds), range(cut))
        spec = self.bundle.cuts[cut]
        return ({t.name: fetch(env[t.name]) for t in spec.crossing}, {name: fetch(env[name]) for name in spec.mobile_outputs})


@pytest.fixture(scope="module")
def lenet(tmp_path_factory):
    return Compiled(tmp_path_factory, "lenet", width=0.25)


@pytest.fixture(scope="module")
def inception(tmp_path_factory):
    return Compiled(tmp_path_factory, "inception", input_size=32, width=0.125)


@pytest.fixture(scope="module")
def lenet_server(lenet):
    with start_server(lenet.path) as server:
        yield server


@pytest.fixture(scope="module")
def inception_server(inception):
    with start_server(inception.path) as server:
        yield server


@pytest.fixture(scope="module")
def guarded_server(lenet):
    """A server with a bearer token and a small body limit."""
    with start_server(lenet.path, token=TOKEN, extra_args=["--max-body-bytes", str(BODY_LIMIT)]) as server:
        yield server


# --- HTTP helpers --------------------------------------------------------------------------------


def call(url: str, body: bytes | None = None, headers: dict | None = None):
    """(status, headers (case-insensitive), body) of one request; error statuses are answers too."""
    request = urllib.request.Request(url, data=body, headers=headers or {}, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.headers, answer.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def infer(server, model: str, inputs: dict[str, np.ndarray], headers: dict | None = None, **options):
    """POST an infer request built by our own protocol encoder: (status, headers, body)."""
    body, extra = encode_infer_request(inputs, **options)
    return call(f"{server.url}/v2/models/{model}/infer", body, {**extra, **server.headers(), **(headers or {})})


def error_of(status_headers_body) -> str:
    return json.loads(status_headers_body[2])["error"]


def assert_outputs_match(outputs: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> None:
    assert set(outputs) == set(reference)
    for name, value in outputs.items():
        np.testing.assert_allclose(value, reference[name], rtol=RTOL, atol=ATOL, err_msg=name)


# --- (a) split execution: mobile segments here, server segments over the wire --------------------


# inception (fused-layers): cut 6 crosses two tensors, 11 four, 16 and on leave the aux output on the device
@pytest.mark.parametrize("fixture, cuts", [("lenet", [0, 1, 3, 5, 6]), ("inception", [0, 6, 11, 14, 16, 25, 35])])
def test_split_inference_matches_onnxruntime(request, fixture, cuts):
    compiled, server = request.getfixturevalue(fixture), request.getfixturevalue(f"{fixture}_server")
    segments = len(compiled.bundle.segments)
    for cut in cuts:
        crossing, mobile_outputs = compiled.mobile_side(cut)
        status, headers, body = infer(server, cut_model_name(compiled.bundle.name, cut), crossing)
        assert status == 200, body
        server_outputs, parameters = decode_infer_response(body, int(headers[HEADER_LENGTH]))
        assert set(server_outputs) == set(compiled.bundle.cuts[cut].server_outputs)
        assert parameters["server_segments"] == segments - cut
        assert_outputs_match({**mobile_outputs, **server_outputs}, compiled.reference)


def test_outputs_can_be_chosen_and_sent_as_json(inception, inception_server):
    crossing, _ = inception.mobile_side(6)
    status, headers, body = infer(inception_server, cut_model_name("inception", 6), crossing, outputs=["aux"],
                                  binary=False)
    assert status == 200 and HEADER_LENGTH not in headers and headers["content-type"] == "application/json"
    outputs, _ = decode_infer_response(body, None)
    assert_outputs_match(outputs, {"aux": inception.reference["aux"]})


# --- (b) Triton's own client, unmodified ---------------------------------------------------------


def triton_infer(client, model: str, inputs: dict[str, np.ndarray], outputs: list[str], binary: bool):
    tensors = []
    for name, value in inputs.items():
        tensor = triton.InferInput(name, list(value.shape), DATATYPES[value.dtype.name])
        tensor.set_data_from_numpy(value, binary_data=binary)
        tensors.append(tensor)
    requested = [triton.InferRequestedOutput(name, binary_data=binary) for name in outputs]
    result = client.infer(model, tensors, outputs=requested)
    return {name: result.as_numpy(name) for name in outputs}, result.get_response()


def test_triton_client(inception, inception_server):
    client = triton.InferenceServerClient(url=inception_server.url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("inception")
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    metadata = client.get_model_metadata("inception")
    assert metadata["platform"] == "neurosurgeon_tvm" and metadata["versions"] == ["1"]
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [1, 3, 32, 32]}]
    assert {o["name"] for o in metadata["outputs"]} == {"output", "aux"}

    for binary in (False, True):  # the whole model under the bundle's name, JSON then binary tensors
        outputs, response = triton_infer(client, "inception", inception.feeds, ["output", "aux"], binary)
        assert_outputs_match(outputs, inception.reference)
        assert response["model_name"] == "inception" and response["parameters"]["server_segments"] == 36

    cut = 11  # four crossing tensors, two outputs
    crossing, _ = inception.mobile_side(cut)
    outputs, _ = triton_infer(client, cut_model_name("inception", cut), crossing, ["output", "aux"], binary=True)
    assert_outputs_match(outputs, inception.reference)

    # with no outputs named, tritonclient asks for all of them as binary
    tensor = triton.InferInput("input", [1, 3, 32, 32], "FP32")
    tensor.set_data_from_numpy(inception.feeds["input"])
    result = client.infer("inception", [tensor])
    assert_outputs_match({n: result.as_numpy(n) for n in ("output", "aux")}, inception.reference)
    for algorithm in ("gzip", "deflate"):  # a whole body compressed, as Triton's HTTP endpoint takes it
        result = client.infer("inception", [tensor], request_compression_algorithm=algorithm)
        assert_outputs_match({n: result.as_numpy(n) for n in ("output", "aux")}, inception.reference)
    assert client.get_server_metadata()["parameters"]["content_encoding"] == ["shuffle-zlib", "float16", "int8"]

    bad = triton.InferInput("input", [1, 3, 16, 16], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 3, 16, 16), np.float32))
    with pytest.raises(InferenceServerException, match=r"expected shape \[1, 3, 32, 32\], got \[1, 3, 16, 16\]"):
        client.infer("inception", [bad])


# --- (c) requests the server must refuse, and why ------------------------------------------------


def test_bad_inputs_are_refused_naming_the_problem(lenet, lenet_server):
    x = lenet.feeds["input"]
    cases = [  # (model, inputs, words the error must contain)
        ("lenet", {"image": x}, ["missing input 'input'", "unexpected input 'image'"]),
        ("lenet", {"input": x[0]}, ["input 'input'", "expected shape [1, 1, 28, 28], got [1, 28, 28]"]),
        ("lenet", {"input": x.astype(np.float64)}, ["input 'input'", "expected datatype FP32, got FP64"]),
        ("lenet-cut02", {"input": x}, ["missing input 'pool1'", "unexpected input 'input'"]),
    ]
    for model, inputs, words in cases:
        answer = infer(lenet_server, model, inputs)
        assert answer[0] == 400 and all(w in error_of(answer) for w in words), (words, answer)

    answer = infer(lenet_server, "lenet", {"input": x}, outputs=["logits"])
    assert answer[0] == 400 and "no output 'logits'" in error_of(answer) and "output" in error_of(answer)

    answer = infer(lenet_server, "alexnet", {"input": x})
    assert answer[0] == 404 and "unknown model 'alexnet'" in error_of(answer)
    answer = call(f"{lenet_server.url}/v2/models/lenet/versions/7")
    assert answer[0] == 404 and "no version '7'" in error_of(answer)


def test_malformed_bodies_are_refused(lenet_server):
    body, headers = encode_infer_request({"input": np.zeros((1, 1, 28, 28), np.float32)})
    url = f"{lenet_server.url}/v2/models/lenet/infer"
    cases = [  # (body, headers, words the error must contain)
        (body[:-100], headers, ["truncated", "input 'input'"]),
        (body + b"\0" * 8, headers, ["8 unexpected bytes"]),
        (body, {**headers, HEADER_LENGTH: str(len(body) + 1)}, [f"{HEADER_LENGTH} is {len(body) + 1}"]),
        (b'{"inputs": [', {}, ["not valid JSON"]),
        (json.dumps({"inputs": [{"name": "input", "shape": [1], "datatype": "BYTES", "data": ["a"]}]}).encode(), {},
         ["BYTES", "not supported"]),
    ]
    for data, extra, words in cases:
        answer = call(url, data, extra)
        assert answer[0] == 400 and all(w in error_of(answer) for w in words), (words, answer)


def test_body_limit(lenet, guarded_server):
    auth = guarded_server.headers()
    ok = infer(guarded_server, "lenet", lenet.feeds)
    assert ok[0] == 200, ok

    crossing, _ = lenet.mobile_side(1)
    answer = infer(guarded_server, "lenet-cut01", crossing)  # refused from its Content-Length, before reading
    assert answer[0] == 413 and f"limit of {BODY_LIMIT} bytes" in error_of(answer)

    # no Content-Length: chunked, refused while it streams in
    body, headers = encode_infer_request(crossing)
    connection = http.client.HTTPConnection("127.0.0.1", guarded_server.port, timeout=30)
    connection.request("POST", "/v2/models/lenet-cut01/infer", body=iter([body[:2000], body[2000:]]),
                       headers={**headers, **auth}, encode_chunked=True)
    answer = connection.getresponse()
    assert answer.status == 413 and f"limit of {BODY_LIMIT} bytes" in json.loads(answer.read())["error"]
    connection.close()

    # a gzip body that fits but inflates past the limit is refused as a large one; garbage is a 400
    url = f"{guarded_server.url}/v2/models/lenet-cut01/infer"
    small = gzip.compress(b"\0" * BODY_LIMIT * 4)
    assert len(small) < BODY_LIMIT
    answer = call(url, small, {**headers, **auth, "Content-Encoding": "gzip"})
    assert answer[0] == 413 and "bytes inflated" in error_of(answer)
    answer = call(url, b"not gzip at all", {**headers, **auth, "Content-Encoding": "gzip"})
    assert answer[0] == 400 and "not valid gzip data" in error_of(answer)
    answer = call(url, body, {**headers, **auth, "Content-Encoding": "br"})
    assert answer[0] == 415 and "Content-Encoding 'br' is not supported" in error_of(answer)
    ok_body, ok_headers = encode_infer_request(lenet.feeds)
    answer = call(f"{guarded_server.url}/v2/models/lenet/infer", zlib.compress(ok_body),
                  {**ok_headers, **auth, "Content-Encoding": "deflate"})
    assert answer[0] == 200, answer


def test_token(lenet, guarded_server):
    url = guarded_server.url
    for path in ("/v2/health/ready", "/v2/models/lenet", "/v2"):
        status, headers, body = call(url + path)
        assert status == 401 and "Bearer" in headers["www-authenticate"] and "Authorization" in json.loads(body)["error"]
        assert LOAD_HEADER not in headers  # nothing about the server for strangers
    answer = infer(guarded_server, "lenet", lenet.feeds, headers={"Authorization": "Bearer guess"})
    assert answer[0] == 401 and "invalid bearer token" in error_of(answer)
    assert 'error="invalid_token"' in answer[1]["www-authenticate"]
    assert call(url + "/v2/health/live")[0] == 200  # liveness stays open for orchestrators
    assert call(url + "/v2/models/lenet", headers=guarded_server.headers())[0] == 200


# --- (d) load reporting --------------------------------------------------------------------------


def test_load_is_reported(lenet, lenet_server):
    for _ in range(3):
        status, headers, body = infer(lenet_server, "lenet-cut03", lenet.mobile_side(3)[0])
        assert status == 200
    _, parameters = decode_infer_response(body, int(headers[HEADER_LENGTH]))
    assert parameters["queue_length"] == 0  # requests were sequential: nothing else waits or runs
    assert 0 < parameters["compute_s"] < 5 and 0 < parameters["mean_service_s"] < 5
    assert 0 < parameters["busy_fraction"] <= 1
    assert parameters["server_segments"] == len(lenet.bundle.segments) - 3

    status, headers, body = call(f"{lenet_server.url}/v2/health/ready")
    load = json.loads(body)["load"]
    assert status == 200 and set(load) == {"queue_length", "workers", "busy_fraction", "mean_service_s",
                                              "expected_wait_s"}
    assert load["mean_service_s"] > 0 and json.loads(headers[LOAD_HEADER]) == load


def test_the_server_reports_its_own_segment_times_when_asked(lenet, lenet_server):
    from neurosurgeon.runtime.client import InferenceClient
    from neurosurgeon.runtime.mobile import MobileRuntime

    n = len(lenet.bundle.segments)
    client = InferenceClient(lenet_server.url)
    try:
        inputs = lenet.mobile_side(3)[0]
        outputs = [t.name for t in lenet.bundle.outputs]
        plain = client.infer("lenet-cut03", inputs, outputs, 10.0)
        assert "segment_s" not in plain.parameters  # only when asked: the answer stays small
        asked = client.infer("lenet-cut03", inputs, outputs, 10.0, {"segment_times": True})
    finally:
        client.close()
    times = asked.parameters["segment_s"]
    assert len(times) == n and all(0 < t < 5 for t in times[3:])
    # segments 0..2 have not run on this server unless another test sent them: then they are timed too
    assert all(t is None or t > 0 for t in times[:3])

    # The device plans with what the server measured, not the compile-time figures.
    runtime = MobileRuntime(lenet.bundle, lenet_server.url)
    try:
        before = runtime.planner.server_s.copy()
        runtime.infer(random_inputs(lenet.bundle.inputs, 0), 0)
        after = runtime.planner.server_s
        assert (after != before).any() and np.all(after > 0)
        assert after[3:] == pytest.approx(runtime.server_times[3:])
        # A short stage's compute is mostly the job's fixed cost (tensors in and out): answers in between
        # the server's reports of its times do not scale every segment by it.
        whole = runtime.planner.evaluate(runtime.decide(0)[1], runtime.fixed_schedule(0))[0]
        for _ in range(5):
            runtime.infer(random_inputs(lenet.bundle.inputs, 0), n - 1)
        assert runtime.server_slowdown == 1.0
        assert runtime.planner.evaluate(runtime.decide(0)[1], runtime.fixed_schedule(0))[0] < 2 * whole
    finally:
        runtime.close()


def test_concurrent_requests_queue_on_one_worker(inception, inception_server):
    body, headers = encode_infer_request(inception.feeds)
    url = f"{inception_server.url}/v2/models/inception/infer"
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: call(url, body, headers), range(8)))
    for status, headers, body in answers:
        assert status == 200
        outputs, parameters = decode_infer_response(body, int(headers[HEADER_LENGTH]))
        assert_outputs_match(outputs, inception.reference)
        assert 0 <= parameters["queue_length"] < 8  # the others still waiting or running, never this one


# --- protocol.py alone ---------------------------------------------------------------------------


def sample(dtype: str, shape=(2, 3)) -> np.ndarray:
    rng = np.random.default_rng(0)
    if dtype == "bool":
        return rng.integers(0, 2, shape).astype(bool)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)  # the extremes too: 64-bit integers must not pass through float64
        extremes = np.array([info.min, info.max], dtype=dtype)
        return np.resize(np.concatenate([extremes, rng.integers(info.min, info.max, 4, dtype=dtype)]), shape)
    return rng.standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("dtype", sorted(DATATYPES))
def test_protocol_round_trip(dtype, binary):
    inputs = {"a": sample(dtype), "b": sample(dtype, (4,)), "scalar": sample(dtype, ())}
    body, headers = encode_infer_request(inputs, outputs=["y"], binary=binary, parameters={"k": 1})
    decoded, requested, parameters = decode_infer_request(body, int(headers[HEADER_LENGTH]) if binary else None)
    assert requested == {"y": binary} and parameters == {"k": 1}
    for name, value in inputs.items():
        assert decoded[name].dtype == value.dtype and decoded[name].shape == value.shape
        np.testing.assert_array_equal(decoded[name], value)

    body, headers = encode_infer_response("m", inputs, {"a"} if binary else False, parameters={"queue_length": 2})
    outputs, parameters = decode_infer_response(body, int(headers[HEADER_LENGTH]) if binary else None)
    assert parameters == {"queue_length": 2}
    for name, value in inputs.items():
        assert outputs[name].dtype == value.dtype
        np.testing.assert_array_equal(outputs[name], value)


def test_protocol_defaults():
    body, headers = encode_infer_request({"x": np.ones(3, np.float32)})
    _, requested, parameters = decode_infer_request(body, int(headers[HEADER_LENGTH]))
    assert requested == {} and parameters == {"binary_data_output": True}  # Triton's "all outputs, binary"
    nested = json.dumps({"inputs": [{"name": "x", "shape": [2, 2], "datatype": "INT32", "data": [[1, 2], [3, 4]]}]})
    assert decode_infer_request(nested.encode(), None)[0]["x"].tolist() == [[1, 2], [3, 4]]


def request_with(**entry) -> bytes:
    return json.dumps({"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", **entry}]}).encode()


@pytest.mark.parametrize("body, header_length, words", [
    (b"{not json", None, "not valid JSON"),
    (b"[1, 2]", None, "must be a JSON object"),
    (b'{"inputs": []}', None, "no inputs"),
    (request_with(data=[1.0, 2.0]), 1000, "Inference-Header-Content-Length is 1000"),
    (request_with(data=[1.0]), None, "'data' has 1 elements but shape [2] needs 2"),
    (request_with(data=[1.0, "2"]), None, "element '2' is not valid for FP32"),
    (request_with(data=[1.0, 2.0], datatype="INT32"), None, "element 1.0 is not valid for INT32"),
    (request_with(data=[1, 300], datatype="INT8"), None, "outside the range of INT8"),
    (request_with(data=[[1.0], [2.0, 3.0]]), None, "element [1.0] is not valid for FP32"),
    (request_with(data=[1.0, 2.0], datatype="FP8"), None, "unknown datatype 'FP8'"),
    (request_with(data=["a", "b"], datatype="BYTES"), None, "BYTES (string) tensors are not supported"),
    (request_with(data=[1.0, 2.0], shape=[-2]), None, "shape must be a list of non-negative integers"),
    (request_with(), None, "neither JSON 'data' nor parameters.binary_data_size"),
    (request_with(parameters={"binary_data_size": 12}), None, "binary_data_size is 12 bytes but shape [2] of FP32 needs 8"),
    (request_with(parameters={"binary_data_size": 8}) + b"\0" * 4, len(request_with(parameters={"binary_data_size": 8})),
     "truncated"),
    (request_with(data=[1.0, 2.0]) + b"\0" * 4, len(request_with(data=[1.0, 2.0])), "4 unexpected bytes"),
    (json.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}] * 2}).encode(), None,
     "input 'x' appears twice"),
    (json.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}],
                 "outputs": [{"name": "y"}, {"name": "y"}]}).encode(), None, "output 'y' is requested twice"),
])
def test_protocol_errors(body, header_length, words):
    with pytest.raises(ProtocolError) as caught:
        decode_infer_request(body, header_length)
    assert words in str(caught.value) and caught.value.status == 400


def test_protocol_error_answer_and_model_names():
    with pytest.raises(ProtocolError, match="server error: boom"):
        decode_infer_response(b'{"error": "boom"}', None)
    assert cut_model_name("lenet", 7) == "lenet-cut07"
    assert [parse_cut_model_name("lenet", n) for n in ("lenet-cut07", "lenet-cut123", "lenet-cut7", "lenet-cut007",
                                                       "lenet", "alexnet-cut01", "lenet-cut-1")] == \
        [7, 123, None, None, None, None, None]


def test_a_connection_the_server_closed_while_idle_is_replaced(lenet, lenet_server):
    """uvicorn closes a kept-alive connection after 5 idle seconds; the next request must not fail on
    it (a broken pipe would make the mobile side fall back for nothing)."""
    import time

    from neurosurgeon.runtime.client import InferenceClient

    client = InferenceClient(lenet_server.url)
    try:
        crossing, _ = lenet.mobile_side(3)
        first = client.infer("lenet-cut03", crossing, ["output"], deadline_s=30)
        time.sleep(6.5)
        second = client.infer("lenet-cut03", crossing, ["output"], deadline_s=30)
        np.testing.assert_array_equal(first.outputs["output"], second.outputs["output"])
    finally:
        client.close()
