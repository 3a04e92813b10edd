"""A model repository: `neurosurgeon serve DIR` with several bundles and a broken one, several workers
per bundle, Triton's repository endpoints through tritonclient, Prometheus metrics."""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as triton
from models import heavy_convs
from neurosurgeon.runtime.bundle import Bundle
from neurosurgeon.runtime.mobile import MobileRuntime
from neurosurgeon.runtime.protocol import (
    HEADER_LENGTH,
    decode_infer_response,
    encode_infer_request,
)
from neurosurgeon.runtime.repository import ServedBundle, ServeOptions
from neurosurgeon.runtime.tensors import random_inputs
from neurosurgeon.serving import start_server
from neurosurgeon.tools import zoo
from neurosurgeon.tools.verify import reference_outputs
from prometheus_client.parser import text_string_to_metric_families

from neurosurgeon.api import CompileOptions
from neurosurgeon.api import compile as compile_model

RTOL, ATOL = 1e-4, 1e-5


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    """lenet and chk (a text model) built, and a copy of lenet with a changed artifact named "broken"."""
    root = tmp_path_factory.mktemp("repository")
    models = {"lenet": zoo.build("lenet", width=0.25), "chk": zoo.build("chk", width=0.25)}
    for name, model in models.items():
        compile_model(model, root / name, CompileOptions("x86-host", "x86-host", progress=False, partitioner="fused-layers"), name=name)
    shutil.copytree(root / "lenet", root / "broken")
    artifact = next((root / "broken" / "artifacts" / "x86-host").iterdir())
    artifact.write_bytes(artifact.read_bytes()[:-16] + bytes(16))
    (root / "notes").mkdir()  # a folder that is not a bundle: ignored
    cases = {}
    for name, model in models.items():
        feeds = random_inputs(Bundle(root / name).inputs, seed=4)
        cases[name] = (feeds, reference_outputs(model, feeds))
    return root, cases


ENGINES = {"uvicorn": ["--workers", "2"], "ray": ["--engine", "ray", "--replicas", "2"]}


@pytest.fixture(scope="module", params=list(ENGINES))
def server(request, repository):
    """The same repository on each engine: uvicorn in one process, Ray Serve replicas on a local head."""
    if request.param == "ray":
        pytest.importorskip("ray.serve", reason="Ray Serve is an optional extra (pip install 'neurosurgeon[ray]')")
    before = ray_processes()
    with start_server(repository[0], extra_args=ENGINES[request.param]) as server:
        server.engine = request.param
        yield server
    # the local Ray head started for the server is gone with it
    deadline = time.monotonic() + 30
    while ray_processes() - before and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not ray_processes() - before, f"left behind: {sorted(ray_processes() - before)}"


def ray_processes() -> set[int]:
    found = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            name = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        if name.startswith("ray::") or name.endswith(("raylet", "gcs_server")):
            found.add(int(pid))
    return found


def post(url: str, body: bytes, headers: dict | None = None):
    request = urllib.request.Request(url, data=body, headers=headers or {}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.headers, answer.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def test_the_announcement_names_what_is_served_and_what_is_not(server):
    output = server.output()
    if server.engine == "ray":  # the driver names the folders; each replica checks the bundles itself
        assert "serving broken, chk, lenet (Ray Serve, 2 replicas x 1 workers) on http://127.0.0.1:" in output, output
        return
    assert "serving chk, lenet (2 workers each; not serving broken) on http://127.0.0.1:" in output, output
    assert "not serving" in output and "broken" in output and "does not match the manifest" in output


def test_every_cut_and_the_stage_model_answer_like_onnxruntime(repository, server):
    root, cases = repository
    feeds, reference = cases["lenet"]
    bundle = Bundle(root / "lenet")
    runtime = MobileRuntime(bundle, server.url)
    try:
        for cut in range(len(bundle.segments) + 1):
            outputs, record = runtime.infer(feeds, cut)
            assert not record.fell_back, record.fallback_reason
            np.testing.assert_allclose(outputs["output"], reference["output"], rtol=RTOL, atol=ATOL)
        outputs, record = runtime.infer(feeds, "m0-1 s2-4 m5-6")
        assert not record.fell_back and sum(s.ran_on == "server" for s in record.stages) == 1
        np.testing.assert_allclose(outputs["output"], reference["output"], rtol=RTOL, atol=ATOL)
    finally:
        runtime.close()
    body, headers = encode_infer_request({"nowhere": np.zeros(3, np.float32)}, ["output"])
    status, _, answer = post(f"{server.url}/v2/models/lenet-stage/infer", body, headers)
    assert status == 400 and "unexpected input 'nowhere'" in json.loads(answer)["error"]
    status, _, answer = post(f"{server.url}/v2/models/nothing/infer", body, headers)
    assert status == 404 and "unknown model 'nothing'" in json.loads(answer)["error"]
    with urllib.request.urlopen(f"{server.url}/metrics", timeout=30) as answer:
        families = {f.name for f in text_string_to_metric_families(answer.read().decode())}
    assert "neurosurgeon_inference_requests" in families


def test_tritonclient_sees_the_repository_and_infers_on_both_bundles(repository, server):
    _, cases = repository
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    index = {entry["name"]: entry for entry in client.get_model_repository_index()}
    assert index["broken"]["state"] == "UNAVAILABLE" and "does not match the manifest" in index["broken"]["reason"]
    for name in ("lenet", "lenet-stage", "lenet-cut03", "chk", "chk-stage", "chk-cut00"):
        assert index[name]["state"] == "READY" and client.is_model_ready(name)
    assert not client.is_model_ready("broken")
    assert "notes" not in index
    for name, (feeds, reference) in cases.items():
        metadata = client.get_model_metadata(name)
        inputs = []
        for spec in metadata["inputs"]:
            tensor = triton.InferInput(spec["name"], spec["shape"], spec["datatype"])
            tensor.set_data_from_numpy(feeds[spec["name"]], binary_data=True)
            inputs.append(tensor)
        result = client.infer(name, inputs)
        for output, expected in reference.items():
            np.testing.assert_allclose(result.as_numpy(output), expected, rtol=RTOL, atol=ATOL, err_msg=name)


def test_the_broken_bundle_is_refused_with_its_reason(server):
    body, headers = encode_infer_request({"input": np.zeros((1, 1, 28, 28), np.float32)})
    status, _, answer = post(f"{server.url}/v2/models/broken/infer", body, headers)
    assert status == 503 and "does not match the manifest" in json.loads(answer)["error"]
    status, _, answer = post(f"{server.url}/v2/repository/index", b'{"ready": true}')
    assert status == 200 and "broken" not in {e["name"] for e in json.loads(answer)}


def test_metrics_parse_and_count_what_was_sent(repository, tmp_path):
    """A server of its own, so that the counts are exactly this test's requests."""
    root, cases = repository
    feeds, reference = cases["lenet"]
    sent = received = 0
    with start_server(root / "lenet") as server:
        body, headers = encode_infer_request(feeds)
        for _ in range(3):
            status, answer_headers, answer = post(f"{server.url}/v2/models/lenet/infer", body, headers)
            assert status == 200
            sent, received = sent + len(body), received + len(answer)
        outputs, _ = decode_infer_response(answer, int(answer_headers[HEADER_LENGTH]))
        np.testing.assert_allclose(outputs["output"], reference["output"], rtol=RTOL, atol=ATOL)
        bad = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1], "data": [1.0]}]}).encode()
        assert post(f"{server.url}/v2/models/lenet-cut02/infer", bad)[0] == 400
        with urllib.request.urlopen(f"{server.url}/metrics", timeout=30) as answer:
            assert answer.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            text = answer.read().decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    segments = len(Bundle(root / "lenet").segments)
    requests = "neurosurgeon_inference_requests_total"
    assert samples[(requests, (("model", "lenet"), ("segments", f"0-{segments - 1}"), ("status", "200")))] == 3
    assert samples[(requests, (("model", "lenet-cut02"), ("segments", ""), ("status", "400")))] == 1
    assert samples[("neurosurgeon_inference_received_bytes_total", (("model", "lenet"),))] == sent
    assert samples[("neurosurgeon_inference_sent_bytes_total", (("model", "lenet"),))] == received
    assert samples[("neurosurgeon_inference_request_duration_seconds_count", (("model", "lenet"),))] == 3
    assert samples[("neurosurgeon_inference_batch_size_count", (("bundle", "lenet"),))] == 3
    assert samples[("neurosurgeon_inference_queue_length", (("bundle", "lenet"),))] == 0
    assert samples[("neurosurgeon_workers", (("bundle", "lenet"),))] == 1


@pytest.fixture(scope="module")
def heavy(tmp_path_factory):
    path = tmp_path_factory.mktemp("heavy") / "heavy"
    compile_model(heavy_convs(), path, CompileOptions("x86-host", "x86-host", progress=False), name="heavy")
    return path


@pytest.mark.parametrize("workers", [1, 2])
def test_every_worker_computes_and_the_expected_wait_counts_them(heavy, workers):
    """Jobs of tens of milliseconds, submitted at once: a new request waits only when every worker is
    busy, for one of them; and every worker takes jobs (each has its own loaded segments)."""
    served = ServedBundle(heavy, ServeOptions(workers=workers))
    try:
        model = served.models["heavy"]
        feeds = random_inputs(served.bundle.inputs, seed=1)
        reference = served.pool.submit(served.job(model, feeds, ["y"])).result()[0]["y"]  # also sets the mean
        jobs = [served.job(model, feeds, ["y"]) for _ in range(3)]
        futures = [served.pool.submit(job) for job in jobs]
        load = served.load()  # read while the first jobs still run
        assert load["queue_length"] == 3 and load["workers"] == workers
        ahead = 3 - workers + 1
        assert load["expected_wait_s"] == pytest.approx(ahead * load["mean_service_s"] / workers, abs=2e-6)
        for future in futures:
            np.testing.assert_array_equal(future.result()[0]["y"], reference)
        assert {job.worker for job in jobs} == set(range(workers))
        assert served.load()["queue_length"] == 0
    finally:
        served.close()


@pytest.mark.parametrize("options, env, expected", [(ServeOptions(workers=1, threads=1), None, 1),
                                                    (ServeOptions(workers=2, threads=4), None, 2),
                                                    (ServeOptions(workers=1), "1", 1),
                                                    (ServeOptions(workers=1, threads=3), "1", 3)])
def test_the_threads_are_shared_out_among_the_workers(heavy, monkeypatch, options, env, expected):
    """`serve --threads N` (else NEUROSURGEON_THREADS, else every core) is shared out among the workers."""
    from neurosurgeon.runtime.repository import Repository

    if env is not None:
        monkeypatch.setenv("NEUROSURGEON_THREADS", env)
    repository = Repository(heavy, options)
    try:
        assert repository.bundles["heavy"].pool.threads_per_worker == expected
    finally:
        repository.close()
