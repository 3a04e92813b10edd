"""Dynamic batching: the server side built for batch sizes (compile --server-batch), requests to the
same segments run together; a request's answer in a batch is bit for bit its answer alone on the
same server."""

from __future__ import annotations

import json
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx
import pytest
from neurosurgeon.runtime.bundle import Bundle
from neurosurgeon.runtime.client import InferenceClient
from neurosurgeon.runtime.repository import ServedBundle, ServeOptions
from neurosurgeon.runtime.tensors import random_inputs
from neurosurgeon.serving import start_server
from neurosurgeon.tools import zoo
from neurosurgeon.tools.verify import reference_outputs
from onnx import TensorProto, helper, numpy_helper

from neurosurgeon.api import CompileOptions
from neurosurgeon.api import compile as compile_model
from neurosurgeon.cli import main


@pytest.fixture(scope="module")
def lenet(tmp_path_factory):
    model = zoo.build("lenet", width=0.5)
    path = tmp_path_factory.mktemp("batching") / "lenet"
    compile_model(model, path, CompileOptions("x86-host", "x86-host", progress=False, server_batch=(2, 4)),
                  name="lenet")
    return path, model


def test_the_manifest_lists_every_server_segment_at_every_size(lenet):
    bundle = Bundle(lenet[0])
    assert bundle.manifest.batch_sizes == (1, 2, 4)
    assert sorted((a.batch, a.segment) for a in bundle.manifest.batch_artifacts) == [
        (b, i) for b in (2, 4) for i in range(len(bundle.segments))]
    assert all(f"_b{a.batch}.so" in a.file for a in bundle.manifest.batch_artifacts)


@pytest.mark.parametrize("segments_from", [0, 3])
def test_a_batch_answers_each_request_as_it_is_answered_alone(lenet, segments_from):
    path, model = lenet
    alone = ServedBundle(path, ServeOptions())  # batching on, no delay: requests sent one by one run alone
    batched = ServedBundle(path, ServeOptions(max_queue_delay_s=0.5))
    try:
        cut = alone.models[f"lenet-cut{segments_from:02d}"]
        feeds = [random_inputs(alone.bundle.inputs, seed=s) for s in range(3)]
        if segments_from:  # the tensors a mobile side uploads at that cut, made by the batch-1 artifacts
            upload = alone.job(alone.models["lenet-stage"], feeds[0], [t.name for t in cut.inputs])
            feeds = [alone.pool.submit(alone.job(alone.models["lenet-stage"], f, [t.name for t in cut.inputs]))
                     .result()[0] for f in feeds]
            assert upload.segments == tuple(range(segments_from))
        wanted = [t.name for t in cut.outputs]
        expected = [alone.pool.submit(alone.job(cut, f, wanted)).result() for f in feeds]
        assert all(done.batch == 1 for done in expected)
        futures = [batched.pool.submit(batched.job(cut, f, wanted)) for f in feeds]
        answers = [future.result() for future in futures]
        assert [done.batch for done in answers] == [3, 3, 3]  # zero-padded to the size-4 artifacts
        for got, want in zip((a.outputs for a in answers), (e.outputs for e in expected)):
            for name in wanted:
                np.testing.assert_array_equal(got[name], want[name])
        if segments_from == 0:
            reference = reference_outputs(model, feeds[0])
            np.testing.assert_allclose(answers[0][0]["output"], reference["output"], rtol=1e-4, atol=1e-5)
    finally:
        alone.close()
        batched.close()


def test_workers_share_each_loaded_artifact_and_answer_at_once_as_one_does_alone(lenet):
    """Two workers make their VMs from one loaded module per artifact (the weights once in memory, at
    every batch size), and running at the same time they answer as one worker alone does."""
    path, model = lenet
    one = ServedBundle(path, ServeOptions(workers=1, batching=False))
    two = ServedBundle(path, ServeOptions(workers=2, max_queue_delay_s=0.0))
    try:
        server_artifacts = len(two.bundle.segments) * len(two.bundle.manifest.batch_sizes)
        assert two.pool.workers == 2 and len(two.pool.modules) == server_artifacts  # not twice that
        cut = two.models["lenet-cut00"]
        wanted = [t.name for t in cut.outputs]
        feeds = [random_inputs(two.bundle.inputs, seed=s) for s in range(4)]
        expected = [one.pool.submit(one.job(cut, f, wanted)).result().outputs for f in feeds]
        for _ in range(5):  # both workers busy at once, each running its own VMs of the shared modules
            futures = [two.pool.submit(two.job(cut, f, wanted)) for f in feeds * 2]
            for got, want in zip((f.result().outputs for f in futures), expected * 2):
                np.testing.assert_array_equal(got[wanted[0]], want[wanted[0]])
        np.testing.assert_allclose(expected[0][wanted[0]], reference_outputs(model, feeds[0])[wanted[0]],
                                   rtol=1e-4, atol=1e-5)
    finally:
        one.close()
        two.close()


def test_concurrent_clients_are_batched_over_http_and_metrics_count_the_batches(lenet):
    path, model = lenet
    bundle = Bundle(path)
    feeds = [random_inputs(bundle.inputs, seed=10 + s) for s in range(8)]
    with start_server(path, extra_args=["--max-queue-delay-ms", "200", "--workers", "1"]) as server:
        def ask(f):
            client = InferenceClient(server.url)
            try:
                return client.infer("lenet", f, ["output"], deadline_s=30)
            finally:
                client.close()

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(ask, feeds))
        with urllib.request.urlopen(f"{server.url}/v2", timeout=10) as answer:
            meta = json.loads(answer.read())["bundles"][0]
        with urllib.request.urlopen(f"{server.url}/metrics", timeout=10) as answer:
            metrics = answer.read().decode()
    assert meta["batch_sizes"] == [1, 2, 4] and meta["max_queue_delay_s"] == 0.2
    assert max(a.parameters["batch_size"] for a in answers) > 1
    for f, a in zip(feeds, answers):
        np.testing.assert_allclose(a.outputs["output"], reference_outputs(model, f)["output"], rtol=1e-4, atol=1e-5)
    one = [line for line in metrics.splitlines() if line.startswith('neurosurgeon_inference_batch_size_bucket{bundle="lenet",le="1"}')]
    assert one and float(one[0].split()[-1]) < len(feeds)  # some requests ran in batches of more than one


def _fixed_batch_model() -> onnx.ModelProto:
    """x -> Relu -> Reshape to the constant [1, 16]: the batch dimension is written into the graph."""
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Reshape", ["r", "shape"], ["y"], name="flatten")]
    graph = helper.make_graph(nodes, "fixed", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])],
                              [numpy_helper.from_array(np.array([1, 16], dtype=np.int64), "shape")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def test_a_model_that_fixes_its_batch_dimension_is_refused_in_one_line(tmp_path, capsys):
    onnx.save(_fixed_batch_model(), tmp_path / "fixed.onnx")
    code = main(["compile", str(tmp_path / "fixed.onnx"), "--mobile", "x86-host", "--server", "x86-host",
                 "--server-batch", "4", "-o", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "cannot batch at 4" in err, err
    assert not (tmp_path / "out").exists()
