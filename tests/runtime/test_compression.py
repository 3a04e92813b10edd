"""Compressed uploads: codecs, the protocol's content_encoding, the manifest's measurements, the
planner's upload time, and the device coding where it pays, over a real server."""

import json
import urllib.request

import numpy as np
import pytest

from neurosurgeon.api import CompileOptions
from neurosurgeon.api import compile as compile_model
from neurosurgeon.runtime.bundle import Bundle
from neurosurgeon.runtime.codec import CODECS, CodecError, get_codec, measure_codec
from neurosurgeon.runtime.errors import NeurosurgeonError
from neurosurgeon.runtime.mobile import MobileRuntime
from neurosurgeon.runtime.planner import Conditions, PrefixPlanner, SegmentCosts
from neurosurgeon.runtime.protocol import (
    CONTENT_ENCODING,
    HEADER_LENGTH,
    ProtocolError,
    decode_infer_request,
    encode_infer_request,
)
from neurosurgeon.runtime.schedule import TensorGraph
from neurosurgeon.runtime.tensors import random_inputs
from neurosurgeon.serving import start_server
from neurosurgeon.tools import zoo
from neurosurgeon.tools.verify import reference_outputs


def relu_like(shape, seed=0, dtype=np.float32):
    return np.maximum(np.random.default_rng(seed).standard_normal(shape), 0).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.int64, np.uint8, np.bool_])
def test_lossless_codec_round_trips_bit_exactly(dtype):
    codec = get_codec("shuffle-zlib")
    for shape in [(1, 16, 9, 9), (0,), (3,), ()]:
        x = (relu_like(shape) * 10).astype(dtype)
        data = codec.encode(x)
        y = codec.decode(data, x.dtype, x.shape)
        assert y.dtype == x.dtype and y.shape == x.shape and y.tobytes() == x.tobytes()
    x = relu_like((1, 64, 28, 28))
    assert len(codec.encode(x)) < 0.8 * x.nbytes  # half of a ReLU's outputs are zeros


def test_lossy_codecs_are_used_only_when_asked_for_and_bound_their_error():
    for name in ("float16", "int8"):
        assert not CODECS[name].lossless
        with pytest.raises(CodecError, match=f"codec '{name}' loses precision; ask for it by name"):
            get_codec(name)
    x = relu_like((1, 32, 14, 14)) * 3
    for name, factor, tolerance in (("float16", 2, 1e-3), ("int8", 4, 1 / 254)):
        codec = get_codec(name, allow_lossy=True)
        data = codec.encode(x)
        assert len(data) <= x.nbytes / factor + 4
        assert np.abs(codec.decode(data, x.dtype, x.shape) - x).max() <= tolerance * np.abs(x).max() + 1e-7
    with pytest.raises(CodecError, match="unknown codec 'lz77'"):
        get_codec("lz77")
    with pytest.raises(NeurosurgeonError, match="compression must be auto, off or a codec"):
        MobileRuntime("no-bundle-needed", compression="lz77")


def test_protocol_carries_coded_tensors_and_refuses_bad_ones():
    x, y = relu_like((1, 8, 5, 5)), relu_like((2, 3), seed=1)
    body, headers = encode_infer_request({"x": x, "y": y}, codecs={"x": "shuffle-zlib"})
    header = json.loads(body[:int(headers[HEADER_LENGTH])])
    assert header["inputs"][0]["parameters"][CONTENT_ENCODING] == "shuffle-zlib"
    assert CONTENT_ENCODING not in header["inputs"][1]["parameters"]  # y travels raw
    inputs, _, _ = decode_infer_request(body, int(headers[HEADER_LENGTH]))
    assert inputs["x"].tobytes() == x.tobytes() and inputs["y"].tobytes() == y.tobytes()

    def tampered(**changes):
        h = json.loads(body[:int(headers[HEADER_LENGTH])])
        h["inputs"][0]["parameters"].update(changes)
        text = json.dumps(h).encode()
        return text + body[int(headers[HEADER_LENGTH]):], len(text)

    with pytest.raises(ProtocolError, match="input 'x': unknown content_encoding 'brotli'"):
        decode_infer_request(*tampered(content_encoding="brotli"))
    size = header["inputs"][0]["parameters"]["binary_data_size"]
    with pytest.raises(ProtocolError, match="input 'x': not valid shuffle-zlib data"):
        decode_infer_request(*tampered(binary_data_size=size - 3))


def test_planner_prices_a_coded_upload_and_codes_only_where_it_pays():
    graph = TensorGraph.chain([1_000_000, 10_000], 40)
    stats = {"t0": measure_codec(get_codec("shuffle-zlib"), [relu_like((250_000,))])}
    coded = graph.with_codec(stats)
    st = stats["t0"]
    assert st.bytes < 0.8 * st.raw_bytes and st.encode_s > 0
    slow, fast = 1.0, 1e6  # Mbps: on a slow link coding pays, on an absurdly fast one it does not
    assert coded.pays_to_code(0, slow) and not coded.pays_to_code(0, fast)
    assert coded.upload_nbytes(slow)[0] == pytest.approx(st.bytes + (st.encode_s + st.decode_s) * slow * 1e6 / 8)
    assert coded.upload_nbytes(fast)[0] == graph.nbytes[0]
    costs = SegmentCosts(np.array([0.01, 0.01]), np.array([0.001, 0.001]), np.zeros(2))
    c = Conditions(slow, slow * 2, 0.02)
    raw_latency = PrefixPlanner(graph, costs).predict(c)[0]
    coded_latency = PrefixPlanner(coded, costs).predict(c)[0]
    assert coded_latency[0] < raw_latency[0] and coded_latency[1:].tolist() == raw_latency[1:].tolist()


@pytest.fixture(scope="module")
def alexnet(tmp_path_factory):
    root = tmp_path_factory.mktemp("compression")
    zoo.save(zoo.build("alexnet", input_size=64, width=0.25), root / "alexnet.onnx")
    compile_model(root / "alexnet.onnx", root / "bundle", CompileOptions("x86-host", "x86-host", progress=False, partitioner="fused-layers"))
    bundle = Bundle(root / "bundle")
    feeds = random_inputs(bundle.inputs, seed=3)
    with start_server(bundle.path) as server:
        yield bundle, feeds, reference_outputs(root / "alexnet.onnx", feeds), server


def test_the_manifest_measures_every_crossing_tensor_under_every_codec(alexnet):
    bundle = alexnet[0]
    crossing = {t.name for cut in bundle.manifest.cuts for t in cut.crossing}
    assert set(bundle.manifest.codecs) == set(CODECS)
    for codec, tensors in bundle.manifest.codecs.items():
        assert set(tensors) == crossing, codec
        assert all(s.raw_bytes > 0 and s.bytes > 0 and s.encode_s > 0 and s.decode_s > 0 for s in tensors.values())
    relu = [s for name, s in bundle.manifest.codecs["shuffle-zlib"].items() if name.startswith("relu")]
    assert relu and all(s.ratio > 1.2 for s in relu)  # ReLU outputs compress
    metadata = json.loads(urllib.request.urlopen(f"{alexnet[3].url}/v2").read())
    assert metadata["parameters"][CONTENT_ENCODING] == list(CODECS)


def test_coded_uploads_over_the_real_server_equal_raw_ones_bit_exactly(alexnet):
    bundle, feeds, reference, server = alexnet
    n = len(bundle.segments)
    raw = MobileRuntime(bundle, server.url, network="3g", compression="off")
    # every upload coded losslessly ("auto" would learn the loopback's rate, at which coding does not pay)
    coded = MobileRuntime(bundle, server.url, network="3g", compression="shuffle-zlib")
    for cut in (0, 1, n // 2, n - 1):
        raw_out, raw_record = raw.infer(feeds, cut)
        coded_out, coded_record = coded.infer(feeds, cut)
        assert not raw_record.fell_back and not coded_record.fell_back
        for name in reference:
            assert coded_out[name].tobytes() == raw_out[name].tobytes()
            np.testing.assert_allclose(coded_out[name], reference[name], rtol=1e-4, atol=1e-5)
        assert raw_record.upload_bytes > raw_record.crossing_bytes  # tensors plus header
        if cut > 0:  # after a ReLU: fewer bytes on the wire than the tensors hold
            assert coded_record.upload_bytes < raw_record.upload_bytes
    lossy = MobileRuntime(bundle, server.url, network="3g", compression="int8")
    outputs, record = lossy.infer(feeds, 1)
    assert not record.fell_back and record.upload_bytes < record.crossing_bytes / 3.5
    assert np.abs(outputs["output"] - reference["output"]).max() < 0.05
