"""Schedules end to end over loopback: the mobile runtime in this process, `neurosurgeon serve` in its
own; every answer equal to onnxruntime on the whole model. A chain with one, two and three server
stages, each planner's own choice, DAGs (Inception, ResNet-18) placed off the prefixes, the server's
stage model refusing what does not add up, and a server killed between the stages of a schedule."""

import contextlib
import json
import urllib.error
import urllib.request

import numpy as np
import pytest

from neurosurgeon.api import CompileOptions
from neurosurgeon.api import compile as compile_model
from neurosurgeon.runtime.bundle import Bundle
from neurosurgeon.runtime.mobile import MobileRuntime
from neurosurgeon.runtime.planner import PLANNERS, _placements
from neurosurgeon.runtime.protocol import HEADER_LENGTH, encode_infer_request, stage_model_name
from neurosurgeon.runtime.schedule import Schedule, TensorGraph
from neurosurgeon.runtime.tensors import random_inputs
from neurosurgeon.serving import start_server
from neurosurgeon.tools import zoo
from neurosurgeon.tools.verify import reference_outputs

MODELS = {"alexnet": dict(input_size=64, width=0.125), "inception": dict(input_size=32, width=0.125),
          "resnet18": dict(input_size=32, width=0.125)}
# AlexNet cut after every layer (21 segments: the most room for multi-stage schedules); the DAGs at every
# boundary a compiler does not fuse (the default, upload-envelope, keeps Inception 4 segments: no room
# for placements off the prefixes)
PARTITIONERS = {"alexnet": "layer-boundaries", "inception": "fused-layers", "resnet18": "fused-layers"}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Per model: (bundle, feeds, reference, server), every server in its own process."""
    root = tmp_path_factory.mktemp("schedules")
    found = {}
    with contextlib.ExitStack() as stack:
        for name, shape in MODELS.items():
            model = zoo.build(name, **shape)
            options = CompileOptions("x86-host", "x86-host", progress=False,
                                     partitioner=PARTITIONERS[name])
            result = compile_model(model, root / name, options, name=name)
            bundle = Bundle(result.path)
            feeds = random_inputs(bundle.inputs, seed=4)
            found[name] = (bundle, feeds, reference_outputs(model, feeds), stack.enter_context(start_server(bundle.path)))
        yield found


def assert_matches(outputs, reference):
    assert set(outputs) == set(reference)
    for name, value in reference.items():
        np.testing.assert_allclose(outputs[name], value, rtol=1e-4, atol=1e-5)


def run(served, name, schedule, planner=None):
    bundle, feeds, reference, server = served[name]
    runtime = MobileRuntime(bundle, server.url, planner=planner)
    outputs, record = runtime.infer(feeds, schedule)
    assert not record.fell_back, record.fallback_reason
    assert_matches(outputs, reference)
    return record


@pytest.mark.parametrize("schedule, server_stages", [("m0-4 s5-20", 1), ("s0-5 m6-12 s13-20", 2),
                                                     ("m0-2 s3-7 m8-11 s12-15 m16-18 s19-20", 3)])
def test_a_chain_with_one_two_and_three_server_stages(served, schedule, server_stages):
    bundle = served["alexnet"][0]
    assert len(bundle.segments) == 21
    record = run(served, "alexnet", schedule)
    assert record.schedule == schedule and sum(s.ran_on == "server" for s in record.stages) == server_stages
    for stage in record.stages:
        assert stage.measured_s > 0 and stage.predicted_s > 0
        if stage.side == "server":
            assert stage.upload_bytes > 0 and stage.download_bytes > 0
    assert record.predicted_latency_s == pytest.approx(sum(s.predicted_s for s in record.stages), rel=1e-9)


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("planner", list(PLANNERS))
def test_every_planner_s_choice_runs_and_matches(served, name, planner):
    record = run(served, name, "auto", planner=planner)
    assert record.planner == planner and record.chosen == "auto"


@pytest.mark.parametrize("name", ["inception"])
def test_dag_placements_off_the_prefixes_run_and_match(served, name):
    """Placements whose mobile part is closed under "is read by" but is no prefix of the segment order:
    one upload of every tensor crossing, as DADS places a DAG. (ResNet-18's segments are a chain since
    each residual add joined the segment of the convolution before it: a placement with one branch of
    a block on the device uploaded both the add's operands.)"""
    bundle = served[name][0]
    graph = TensorGraph.of_bundle(bundle)
    placements = _placements(graph, 10 ** 6)
    prefixes = {(np.arange(graph.n) >= k).tobytes() for k in range(graph.n + 1)}
    off = [m for m in placements if m.tobytes() not in prefixes]
    assert off, "the DAG has no placement but the prefixes"
    rng = np.random.default_rng(0)
    for mask in [off[i] for i in rng.choice(len(off), size=min(3, len(off)), replace=False)]:
        schedule = Schedule.of(graph, mask)
        record = run(served, name, schedule)
        assert record.cut is None and [s.side for s in record.stages] == ["mobile", "server"]


def test_the_stage_model_runs_exactly_what_is_asked_and_refuses_the_rest(served):
    bundle, feeds, reference, server = served["alexnet"]
    graph = TensorGraph.of_bundle(bundle)
    url = f"{server.url}/v2/models/{stage_model_name(bundle.name)}/infer"
    made = {t.name: t for s in bundle.segments for t in s.outputs}

    def post(inputs, outputs):
        body, headers = encode_infer_request(inputs, outputs)
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request) as answer:
                body, length = answer.read(), answer.headers.get(HEADER_LENGTH)
                return answer.status, json.loads(body[:int(length)] if length else body)
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    def tensor(segment):  # what a segment makes, as zeros
        info = made[graph.names[graph.makes[segment][0]]]
        return info.name, np.zeros(info.shape, info.dtype)

    status, answer = post(feeds, [t.name for t in bundle.outputs])  # the whole model as one stage
    assert status == 200 and answer["parameters"]["server_segments"] == 21
    t3, x3 = tensor(3)
    t8, _ = tensor(8)
    status, answer = post({t3: x3}, [t8])
    assert status == 200 and answer["parameters"]["server_segments"] == 5  # segments 4..8
    status, answer = post({**feeds, t3: x3}, [t8])
    assert status == 400 and "given tensor(s) 'input' are read by none of the segments" in answer["error"]
    status, answer = post({t8: tensor(8)[1]}, [t3])
    assert status == 400 and "the model input 'input' is needed but not given" in answer["error"]
    status, answer = post({t3: x3}, ["no-such-tensor"])
    assert status == 400 and "no-such-tensor" in answer["error"]


def test_a_server_killed_between_stages_leaves_the_answer_right(served, tmp_path):
    """A three-stage schedule, server - mobile - server: the server dies while the mobile stage runs;
    the second server stage runs here and the answer is still onnxruntime's."""
    bundle, feeds, reference, _ = served["alexnet"]
    with start_server(bundle.path) as server:  # one of its own, to kill
        runtime = MobileRuntime(bundle, server.url)
        run_here = runtime._run_here

        def kill_then_run(env, segments):
            server.stop()
            return run_here(env, segments)

        runtime._run_here = kill_then_run
        outputs, record = runtime.infer(feeds, "s0-5 m6-12 s13-20")
    assert_matches(outputs, reference)
    assert [s.ran_on for s in record.stages] == ["server", "mobile", "mobile"]
    assert record.fell_back and record.fallback_s > 0 and record.stages[0].download_bytes > 0


def test_shortest_path_sends_two_stretches_to_the_server_when_the_mobile_side_is_slow_at_them(served, tmp_path):
    """Costs (a costs file) where the mobile side takes 0.1 s for each of segments 4-6 and 14-18 that the
    server does in 1 ms, and the server 50 ms for each of 7-13 that the mobile side does in 1 ms: the
    shortest path sends both stretches up and brings 7-13 back, the best cut cannot; both answers
    equal onnxruntime's."""
    bundle, feeds, reference, server = served["alexnet"]
    mobile_s, server_s = np.full(21, 1e-3), np.full(21, 1e-3)
    mobile_s[[4, 5, 6, 14, 15, 16, 17, 18]] = 0.1
    server_s[7:14] = 0.05
    costs = tmp_path / "costs.json"
    costs.write_text(json.dumps({"format": "neurosurgeon-costs", "version": 1,
                                 "mobile": {"segment_seconds": list(mobile_s), "source": "test"},
                                 "server": {"segment_seconds": list(server_s), "source": "test"}}))
    records = {}
    for planner in ("shortest-path", "prefix"):
        runtime = MobileRuntime(bundle, server.url, planner=planner, costs=costs, learn=False)
        outputs, records[planner] = runtime.infer(feeds)
        assert_matches(outputs, reference)
    path, cut = records["shortest-path"], records["prefix"]
    assert sum(s.side == "server" for s in path.stages) == 2, path.schedule
    assert cut.cut is not None and path.predicted_latency_s < cut.predicted_latency_s
